"""``DirectRoute`` (api/deps.py): an endpoint called without FastAPI's dependency solving
gets what FastAPI would have given it, and one that wants more is refused when built."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.testclient import TestClient

from omniflash.api.deps import DirectRoute
from omniflash.api.responses import JSONResponse

pytestmark = pytest.mark.timeout(30)

calls: list[str] = []


async def _first(request: Request) -> str:
    calls.append("first")
    return f"first:{request.url.path}"


async def _second(request: Request) -> str:
    calls.append("second")
    return "second"


async def _endpoint(
    thing_id: str,
    request: Request,
    first: Annotated[str, Depends(_first)],
    second: Annotated[str, Depends(_second)],
    color: Annotated[str | None, Query(description="a colour")] = None,
    size: Annotated[str | None, Query(alias="SIZE")] = None,
) -> JSONResponse:
    return JSONResponse(
        {
            "thing_id": thing_id,
            "first": first,
            "second": second,
            "color": color,
            "size": size,
            "method": request.method,
        }
    )


def _app(endpoint: Any) -> FastAPI:
    app = FastAPI()
    app.router.add_api_route(
        "/things/{thing_id}", endpoint, methods=["GET"], route_class_override=DirectRoute
    )
    return app


def test_the_endpoint_gets_its_path_query_request_and_dependencies() -> None:
    calls.clear()
    client = TestClient(_app(_endpoint))
    body = client.get("/things/t%201?color=red&color=blue&SIZE=9").json()
    assert body == {
        "thing_id": "t 1",
        "first": "first:/things/t 1",
        "second": "second",
        "color": "blue",  # the last of a repeated parameter, as FastAPI takes it
        "size": "9",
        "method": "GET",
    }
    assert calls == ["first", "second"]  # each dependency once, in the signature's order
    assert client.get("/things/x").json()["color"] is None
    assert client.get("/things/x?color=").json()["color"] == ""


def test_the_schema_is_the_signatures() -> None:
    operation = _app(_endpoint).openapi()["paths"]["/things/{thing_id}"]["get"]
    names = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert names == {("thing_id", "path"), ("color", "query"), ("SIZE", "query")}


def test_errors_raised_by_the_endpoint_reach_the_apps_handlers() -> None:
    async def failing(thing_id: str) -> JSONResponse:
        raise KeyError(thing_id)

    app = _app(failing)

    @app.exception_handler(KeyError)
    async def _missing(_request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"missing": exc.args[0]}, status_code=404)

    answer = TestClient(app).get("/things/nope")
    assert answer.status_code == 404 and answer.json() == {"missing": "nope"}


async def _typed(thing_id: int) -> JSONResponse:
    return JSONResponse({})


async def _with_body(thing_id: str, body: Annotated[str, Body()]) -> JSONResponse:
    return JSONResponse({})


async def _with_header(thing_id: str, x_thing: Annotated[str | None, Header()] = None) -> Any:
    return JSONResponse({})


async def _required_query(thing_id: str, color: str) -> JSONResponse:
    return JSONResponse({})


def _sync(thing_id: str) -> JSONResponse:
    return JSONResponse({})


async def _needs_more(request: Request, other: str) -> str:
    return other


async def _deep(thing_id: str, more: Annotated[str, Depends(_needs_more)]) -> JSONResponse:
    return JSONResponse({})


@pytest.mark.parametrize(
    "endpoint", [_typed, _with_body, _with_header, _required_query, _sync, _deep]
)
def test_an_endpoint_that_wants_more_is_refused_when_the_route_is_built(endpoint: Any) -> None:
    with pytest.raises(TypeError, match="DirectRoute"):
        _app(endpoint)
