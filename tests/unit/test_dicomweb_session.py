"""The DICOMweb session resends a request whose connection the PACS dropped without an answer."""

import socket
import threading

import pytest
import requests

from lib.dicomweb.datastore import retry_dropped_connections


def serve_after_one_drop(listener: socket.socket, requests_seen: list[bytes]) -> None:
    """Accept two connections: close the first after reading its request, answer the second."""
    for answer in (None, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"):
        connection, _ = listener.accept()
        with connection:
            requests_seen.append(connection.recv(65536))
            if answer:
                connection.sendall(answer)


def test_a_request_on_a_dropped_connection_is_sent_again():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        seen: list[bytes] = []
        server = threading.Thread(target=serve_after_one_drop, args=(listener, seen), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web/studies"
        response = retry_dropped_connections(requests.Session()).post(url, data=b"seg", timeout=10)
        server.join(timeout=10)
    assert response.status_code == 200 and response.json() == []
    assert len(seen) == 2 and all(r.startswith(b"POST /dicom-web/studies") for r in seen)


def test_a_plain_session_gives_up_on_the_dropped_connection():
    """What the retry is for: without it the same drop is an error."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=serve_after_one_drop, args=(listener, []), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web/studies"
        with pytest.raises(requests.ConnectionError):
            requests.Session().post(url, data=b"seg", timeout=10)
        requests.get(url, timeout=10)  # let the server thread finish
        server.join(timeout=10)
