"""The accuracy plot: every dataset a panel, every method one legend entry in one colour."""

from benchmarks.report import plot_curves


def test_accuracy_plot_draws_each_method_once_in_the_legend(tmp_path, monkeypatch):
    import matplotlib.figure

    legends = []
    original = matplotlib.figure.Figure.legend
    monkeypatch.setattr(
        matplotlib.figure.Figure, "legend", lambda self, *a, **k: legends.append(a) or original(self, *a, **k)
    )
    curve = [{"minutes": 1.0, "mean": 0.5}, {"minutes": 2.0, "mean": 0.7}]
    results = {
        "datasets": {"phantom": {}, "real": {}},
        "rows": [
            {"dataset": "phantom", "method": "cmfnet", "title": "CmFNet", "curve": curve},
            {"dataset": "real", "method": "cmfnet", "title": "CmFNet", "curve": curve},
            {"dataset": "real", "method": "graphcut", "title": "graph cut", "served": {"mean": 0.4}},
        ],
    }
    path = tmp_path / "curve.png"
    plot_curves(results, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    handles, titles = legends[0]
    assert titles == ["CmFNet", "graph cut"]
    assert handles[0].get_color() != handles[1].get_color()
