"""The seed's error envelope, the one way this dialect (and every route that is not
OpenAI's) answers an error of ``omniflash.errors``' tree::

    {"error": {"code": 404, "message": "...", "type": "not_found_error"}, "request_id": "..."}

An error that one request field is at fault for (``InvalidParam``) also names it, as the
OpenAI envelope does: ``"param": "duration"`` beside ``code``, ``message`` and ``type``.
``?language=zh|en|ko|ja`` on ``GET /v1/tasks/{id}`` puts the seed's standard message for
the error's type in that language.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from omniflash.api.omni.apimart import LANGUAGES, with_request_id
from omniflash.api.responses import JSONResponse
from omniflash.errors import InvalidParam, OmniflashError

__all__ = ["localize_error", "seed_error", "task_language"]


def seed_error(
    exc: OmniflashError, *, language: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``exc`` in the seed's envelope, with its status and headers (``Retry-After``,
    ``Content-Range``) and any ``headers`` of the route's own."""
    exc = localize_error(exc, language)
    body = exc.to_dict()
    if isinstance(exc, InvalidParam) and exc.param:
        error = body["error"]
        assert isinstance(error, dict)
        error["param"] = exc.param
    return JSONResponse(
        with_request_id(body),
        status_code=exc.status,
        headers={**exc.headers, **(headers or {})} or None,
    )


# The seed's standard messages, by error type, in each language (English is the seed's).
_MESSAGES: dict[str, dict[str, str]] = {
    "invalid_request_error": {
        "zh": "请求参数无效",
        "ko": "요청 매개변수가 올바르지 않습니다",
        "ja": "リクエストパラメータが無効です",
    },
    "authentication_error": {
        "zh": "认证失败，请检查您的 API 密钥",
        "ko": "인증에 실패했습니다. API 키를 확인하세요",
        "ja": "認証に失敗しました。API キーを確認してください",
    },
    "payment_required": {
        "zh": "账户余额不足，请充值后重试",
        "ko": "계정 잔액이 부족합니다. 충전 후 다시 시도하세요",
        "ja": "残高が不足しています。チャージしてから再試行してください",
    },
    "not_found_error": {
        "zh": "任务不存在",
        "ko": "작업을 찾을 수 없습니다",
        "ja": "タスクが見つかりません",
    },
    "rate_limit_error": {
        "zh": "请求过于频繁，请稍后重试",
        "ko": "요청이 너무 많습니다. 잠시 후 다시 시도하세요",
        "ja": "リクエストが多すぎます。しばらくしてから再試行してください",
    },
    "api_error": {
        "zh": "服务器内部错误",
        "ko": "서버 내부 오류",
        "ja": "サーバー内部エラー",
    },
}


def localize_error(exc: OmniflashError, language: str | None) -> OmniflashError:
    """``exc`` with the seed's standard message for its type in ``language`` (English: as is)."""
    text = _MESSAGES.get(exc.type, {}).get(language or "en")
    if text is None:
        return exc
    exc.message = text
    return exc


def task_language(request: Request) -> str | None:
    """The valid ``?language=`` of a ``GET /v1/tasks/{id}``; ``None`` for any other request."""
    if request.method != "GET" or not _TASK_PATH.match(request.url.path):
        return None
    value = request.query_params.get("language", "").strip().lower()
    return value if value in LANGUAGES else None


_TASK_PATH = re.compile(r"^/v1/tasks/[^/]+$")
