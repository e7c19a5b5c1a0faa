"""Image ids, label tags and model names are names, never paths.

One rule for every name a request can carry (image id, label tag, model, strategy, ...):
letters, digits, `_`, `-` and `.`, not starting with `.`, at most 128 characters. It
admits every id this app produces (`case_000`, a DICOM SeriesInstanceUID such as
`1.2.840.113619.2.55`) and no separator, `..` or absolute path. The request guard
(lib.server.guard) applies it to every route's id parameters and :func:`checked_names`
to every datastore method, so a new route or caller cannot forget it.
"""

import re
from typing import Any

from lib.errors import InvalidInput

MAX_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def is_name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_LENGTH and bool(_NAME.fullmatch(value)) and ".." not in value


def check_name(value: Any, what: str) -> str:
    """`value` when it is a valid name, else InvalidInput (422) saying why."""
    if not is_name(value):
        shown = value if isinstance(value, str) and len(value) <= MAX_LENGTH else f"{str(value)[:MAX_LENGTH]}..."
        raise InvalidInput(
            f"{what} {shown!r} is not a valid name: use letters, digits, '_', '-' and '.' "
            f"(not starting with '.', no '..'), at most {MAX_LENGTH} characters"
        )
    return value


def checked_names(datastore_class: type) -> type:
    """Class decorator: `datastore_class` with every method that takes an image id or label tag
    checking it before anything else runs, the class's own overrides included."""
    return type(
        datastore_class.__name__,
        (CheckedNames, datastore_class),
        {"__doc__": datastore_class.__doc__, "__module__": datastore_class.__module__},
    )


class CheckedNames:
    """Datastore mixin, put in front of a datastore class by :func:`checked_names`."""

    def get_image_uri(self, image_id: str, *args, **kwargs):
        return super().get_image_uri(check_name(image_id, "image id"), *args, **kwargs)

    def get_image(self, image_id: str, *args, **kwargs):
        return super().get_image(check_name(image_id, "image id"), *args, **kwargs)

    def get_image_info(self, image_id: str, *args, **kwargs):
        return super().get_image_info(check_name(image_id, "image id"), *args, **kwargs)

    def update_image_info(self, image_id: str, *args, **kwargs):
        return super().update_image_info(check_name(image_id, "image id"), *args, **kwargs)

    def add_image(self, image_id: str, *args, **kwargs):
        if image_id:  # empty: the datastore names it after its own temporary file
            check_name(image_id, "image id")
        return super().add_image(image_id, *args, **kwargs)

    def remove_image(self, image_id: str, *args, **kwargs):
        return super().remove_image(check_name(image_id, "image id"), *args, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, *args, **kwargs):
        check_name(label_tag, "label tag")
        return super().save_label(check_name(image_id, "image id"), label_filename, label_tag, *args, **kwargs)

    def remove_label(self, label_id: str, label_tag: str, *args, **kwargs):
        return super().remove_label(
            check_name(label_id, "label id"), check_name(label_tag, "label tag"), *args, **kwargs
        )

    def get_label(self, label_id: str, label_tag: str, *args, **kwargs):
        return super().get_label(check_name(label_id, "label id"), check_name(label_tag, "label tag"), *args, **kwargs)

    def get_label_uri(self, label_id: str, label_tag: str, *args, **kwargs):
        return super().get_label_uri(
            check_name(label_id, "label id"), check_name(label_tag, "label tag"), *args, **kwargs
        )

    def get_label_info(self, label_id: str, label_tag: str, *args, **kwargs):
        return super().get_label_info(
            check_name(label_id, "label id"), check_name(label_tag, "label tag"), *args, **kwargs
        )

    def update_label_info(self, label_id: str, label_tag: str, *args, **kwargs):
        return super().update_label_info(
            check_name(label_id, "label id"), check_name(label_tag, "label tag"), *args, **kwargs
        )
