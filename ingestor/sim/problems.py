"""ApiError: a Stripe-shaped error the HTTP layer turns into a response with Stripe's error JSON."""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """An error response: HTTP status plus Stripe's `error` object fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str, *, v2: bool = False) -> bytes:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param and not v2:
            error["param"] = self.param
        if not v2:
            error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return orjson.dumps({"error": error})


def bad_param(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="parameter_invalid_integer", param=param)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def missing(what: str, ident: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {what}: '{ident}'", code="resource_missing", param=param)
