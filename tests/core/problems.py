"""Assertions on problem+json responses, shared by core's and the domains' tests."""

from __future__ import annotations

from httpx import Response

PROBLEM_FIELDS = {"type", "title", "status", "instance", "request_id", "detail"}


def assert_problem(response: Response, status: int) -> dict[str, object]:
    """The response is a problem+json of `status` carrying its request id; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body.keys() >= PROBLEM_FIELDS
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body
