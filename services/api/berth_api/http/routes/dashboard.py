"""The dashboard: its page and files, its login (see the access policy for the cookie it sets),
and the JSON document the page draws."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from berth_api.dashboard.assets import PAGE, SECURITY_HEADERS, STATIC_FILES, login_page
from berth_api.dashboard.figures import MAX_MINUTES, MIN_MINUTES, DashboardData
from berth_api.dashboard.service import dashboard_data
from berth_api.http.access import DASHBOARD_COOKIE, DASHBOARD_PATH
from berth_api.http.deps import State
from berth_common.settings import BUNDLE_NAME_PATTERN

router = APIRouter(prefix=DASHBOARD_PATH, tags=["dashboard"])
BundleName = Annotated[str | None, Query(pattern=f"^{BUNDLE_NAME_PATTERN}$")]
HTML = "text/html; charset=utf-8"


@router.get("", include_in_schema=False)
async def page() -> Response:
    return Response(PAGE.body, media_type=PAGE.media_type, headers=SECURITY_HEADERS)


@router.get("/static/{path:path}", include_in_schema=False)
async def static(path: str, request: Request) -> Response:
    asset = STATIC_FILES.get(path)
    if asset is None:
        raise HTTPException(404)
    # revalidated on every load (a new image may serve new files), answered 304 when unchanged
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/login", include_in_schema=False)
async def login_form(state: State, request: Request, key: str | None = None) -> Response:
    """The form; `?key=` logs in at once (for a bookmark or a wall screen)."""
    if key is not None or not state.access.enabled:
        return log_in(state, request, key or "")
    return Response(login_page(), media_type=HTML, headers=SECURITY_HEADERS)


@router.post("/login", include_in_schema=False)
async def login(state: State, request: Request) -> Response:
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), max_num_fields=5))
    return log_in(state, request, form.get("key", ""))


@router.get("/data", response_model=DashboardData)
async def data(
    state: State,
    model: BundleName = None,
    version: BundleName = None,
    minutes: Annotated[int, Query(ge=MIN_MINUTES, le=MAX_MINUTES)] = 60,
) -> DashboardData:
    """What the dashboard draws for a served model version (the default model when `model` is
    not given; the version it serves when `version` is not), over the last `minutes`: SQL over
    the ledger, and the ledger stream's backlog now."""
    return await dashboard_data(
        state.settings,
        state.registry,
        state.engine,
        state.redis,
        name=model,
        version=version,
        minutes=minutes,
    )


def log_in(state: State, request: Request, key: str) -> Response:
    """To the dashboard, with its cookie, when `key` is an API key; the form again otherwise."""
    if not state.access.enabled:
        return _to_dashboard(request)
    token = state.access.dashboard_cookie(key)
    if token is None:
        body = login_page("That key is not valid." if key else "")
        return Response(body, status_code=401, media_type=HTML, headers=SECURITY_HEADERS)
    response = _to_dashboard(request)
    response.set_cookie(
        DASHBOARD_COOKIE,
        token,
        path=DASHBOARD_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _to_dashboard(request: Request) -> Response:
    """303 to the page, keeping what the URL chose (model, window) but not the key."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "key"]
    location = DASHBOARD_PATH + (f"?{urlencode(kept)}" if kept else "")
    return Response(status_code=303, headers={"Location": location, "Cache-Control": "no-store"})
