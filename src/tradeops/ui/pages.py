"""Rendering pages, and the one place a page's errors become what a person reads.

Page routes run in one transaction per request, like the API's (`TransactionalRoute`); a
domain error raised by a service rolls it back and is then shown as a page with the
problem's title, detail and HTTP status, instead of a problem document.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from tradeops.db.http import TransactionalRoute
from tradeops.errors import DomainError, Forbidden, InvalidRequest, Unauthenticated
from tradeops.ui import views

# Nothing from another origin, no inline script or style, no framing, forms post here only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}
SIGN_IN_PATH = "/ui/sign-in"


class SignInRequired(Unauthenticated):
    slug = "sign-in-required"
    title = "Please sign in"


class CsrfRefused(Forbidden):
    slug = "csrf"
    title = "The form has expired"


def _amount(value: Decimal | None) -> str:
    """A quantity or price as the bank writes it: 1,250 or 192.55 (no exponent)."""
    if value is None:
        return ""
    return format(value.normalize(), ",f")


def _places(value: Decimal) -> int:
    """How many decimals a number needs: 0.01 → 2, 192.50 → 1, 25 → 0."""
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _fixed(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places)), ",f")


def _money(value: Decimal | None) -> str:
    """A cash amount with at least cents: 9,627.50."""
    if value is None:
        return ""
    return _fixed(value, max(2, _places(value)))


def price_text(value: Decimal | None, tick: Decimal | None) -> str:
    """A price with its instrument's tick decimals, as a screen quotes it: 415.20 at a tick of
    0.01, 1.0850 at 0.0001. A price finer than its tick (a feed's mid) keeps its decimals."""
    if value is None:
        return ""
    if tick is None:
        return _amount(value)
    return _fixed(value, max(_places(tick), _places(value)))


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _reason(reason: Any) -> str:
    """A risk reason as stored (a string, or an object with a code and a message)."""
    if isinstance(reason, dict):
        code = reason.get("code") or reason.get("rule")
        message = reason.get("message") or reason.get("detail")
        return ": ".join(str(part) for part in (code, message) if part) or str(reason)
    return str(reason)


templates = Environment(
    loader=PackageLoader("tradeops.ui", "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(amount=_amount, money=_money, price=price_text, when=_when, reason=_reason)


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page (or an htmx fragment) with who is signed in and the session's CSRF token."""
    session = getattr(request.state, "page_session", None)
    me = getattr(request.state, "principal", None) if session and session.signed_in else None
    body = templates.get_template(template).render(
        me=me,
        csrf=session.csrf if session else "",
        may_verify_audit=me is not None and views.may_verify_audit(me),
        own_only_nav=me is not None and views.only_own_orders(me),
        **context,
    )
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def sign_in_redirect(request: Request) -> Response:
    """To the sign-in page, then back here. htmx follows HX-Redirect with a full page load."""
    target = f"{SIGN_IN_PATH}?next={quote(request.url.path, safe='/')}"
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=401, headers={"HX-Redirect": target, **PAGE_HEADERS})
    return RedirectResponse(target, status_code=303)


def error_page(request: Request, error: DomainError, back: str | None = None) -> HTMLResponse:
    headers = error.extensions.get("headers") or {}
    response = render(request, "error.html", status=error.status, error=error, back=back)
    response.headers.update(headers)
    return response


def _shown_as_page(
    handle: Callable[[Request], Coroutine[Any, Any, Response]],
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def handle_page(request: Request) -> Response:
        try:
            return await handle(request)
        except SignInRequired:
            return sign_in_redirect(request)
        except DomainError as error:
            return error_page(request, error, back=_back_link(request))
        except RequestValidationError:
            invalid = InvalidRequest("Some of the values sent are not valid.")
            return error_page(request, invalid, back=_back_link(request))

    return handle_page


class PageRoute(TransactionalRoute):
    """A page in one transaction; a refusal (raised, so rolled back) is shown as a page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _shown_as_page(super().get_route_handler())


class UntransactedPageRoute(APIRoute):
    """A page that runs its own transactions (signing in: none is held across the password
    check); refusals are shown as pages all the same."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _shown_as_page(super().get_route_handler())


def _back_link(request: Request) -> str | None:
    """Where the person came from, when it was one of our pages (a form's own page)."""
    path = request.url.path
    if request.method == "POST" and path.startswith("/ui/orders/"):
        return path.rsplit("/", 1)[0]
    return None
