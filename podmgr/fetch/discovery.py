"""appc meta discovery (discovery.md): from an app string to image, signature and key URLs.

Public interface::

    parse_app_string(s: str) -> AppString          # UsageError when malformed
    AppString(name, labels, explicit)              # labels include version/os/arch defaults
    discover(app: AppString, options=None) -> Endpoints
    discover_pubkeys(name: str, options=None) -> list[str]
    Endpoints(acis: list[str], signatures: list[str], pubkeys: list[str])
    host_os_arch() -> tuple[str, str]              # e.g. ("linux", "amd64")
    parse_meta(html: str) -> list[Meta]            # Meta(kind, prefix, value)
    render_template(template: str, values: Mapping[str, str]) -> str | None

An app string is ``name[:version][,label=value…]``; ``:version`` is the label
``version`` (default ``latest``), and ``os``/``arch`` default to the host's, spelt as
appc spells them (the reference implementation's table: x86_64 → amd64, i686 → i386,
aarch64 stays aarch64, armv7l, ppc64le, s390x…). Label values may be %-escaped.

Discovery fetches ``https://{name}?ac-discovery=1`` and, if that fails (any error or a
4xx) or has no matching ``ac-discovery`` template, walks up the name's path
(``example.com/a/b`` → ``example.com/a`` → ``example.com``). A template whose prefix
matches the name is rendered with ``{name}``, ``{ext}`` (``aci``/``aci.asc``) and every
label (``{version}``, ``{os}``, ``{arch}``, any other ``{label}``); a template with a
placeholder that has no value is skipped. ``Endpoints.pubkeys`` are the
``ac-discovery-pubkeys`` URLs found on the pages visited until templates matched.

``FetchOptions`` from ``podmgr.fetch.http`` apply: with ``allow_http`` a discovery URL
that cannot be fetched over https is tried over plain http, as appc's ``--insecure``
does; ``insecure_tls`` skips certificate checks. To point a name's host at a test
server use ``FetchOptions.connect_to`` (or ``PODMGR_CONNECT_TO``), e.g.
``{"example.com": "127.0.0.1:8443"}``: the request still says ``Host: example.com``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from podmgr.errors import NetworkError, NotFoundError

if TYPE_CHECKING:
    from podmgr.fetch.http import FetchOptions

# The app string part lives in podmgr.fetch.appstring (cheap to import: naming a stored
# image needs no HTML or HTTP); re-exported here, where it belongs to the interface.
from podmgr.fetch.appstring import AC_IDENTIFIER as AC_IDENTIFIER
from podmgr.fetch.appstring import DEFAULT_VERSION as DEFAULT_VERSION
from podmgr.fetch.appstring import AppString as AppString
from podmgr.fetch.appstring import host_os_arch as host_os_arch
from podmgr.fetch.appstring import parse_app_string as parse_app_string

# --- meta tags -------------------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    #: ``ac-discovery`` or ``ac-discovery-pubkeys``.
    kind: str
    prefix: str
    #: A URL template (``ac-discovery``) or a key URL (``ac-discovery-pubkeys``).
    value: str


class _MetaParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.metas: list[Meta] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        a = {k.lower(): v or "" for k, v in attrs}
        kind = a.get("name", "").strip().lower()
        if kind not in ("ac-discovery", "ac-discovery-pubkeys"):
            return
        fields = a.get("content", "").split()
        # appc ignores a tag whose content is not exactly "prefix url".
        if len(fields) == 2:
            self.metas.append(Meta(kind, fields[0], fields[1]))


def parse_meta(html: str) -> list[Meta]:
    """The ``ac-discovery`` and ``ac-discovery-pubkeys`` meta tags of a page, in order."""
    p = _MetaParser()
    p.feed(html)
    p.close()
    return p.metas


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def render_template(template: str, values: Mapping[str, str]) -> str | None:
    """Substitute ``{key}`` placeholders; None if one has no value."""
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(1) not in values:
            missing = True
            return m.group(0)
        return values[m.group(1)]

    # One pass, so a value that happens to contain braces is not substituted again.
    out = _PLACEHOLDER.sub(sub, template)
    return None if missing else out


# --- discovery -------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    acis: list[str]
    signatures: list[str]
    pubkeys: list[str]


def _prefixes(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _fetch_page(prefix: str, options: FetchOptions) -> str:
    # http (ssl, http.client) is imported when discovery goes to the network, not when a
    # stored image's name is only parsed.
    from podmgr.fetch.http import HTTPStatusError, get

    """The discovery page for ``prefix``; raises NetworkError."""
    url = f"https://{prefix}?ac-discovery=1"
    try:
        page = get(url, options=options)
    except HTTPStatusError:
        raise
    except NetworkError:
        if not options.allow_http:
            raise
        # appc's --insecure falls back to plain http when https cannot be had at all.
        page = get(f"http://{prefix}?ac-discovery=1", options=options)
    return page.body.decode("utf-8", errors="replace")


@dataclass
class _Walk:
    #: The matching tags of the wanted kind on the first page that had any.
    found: list[Meta] = field(default_factory=list)
    #: ``ac-discovery-pubkeys`` tags matching the name, on every page visited.
    pubkeys: list[Meta] = field(default_factory=list)
    #: Why each visited page did not do.
    failures: list[str] = field(default_factory=list)
    #: Whether any server answered at all (an HTTP error status counts).
    reached: bool = False

    def error(self, what: str, name: str) -> NetworkError | NotFoundError:
        last = self.failures[-1] if self.failures else "no discovery URL"
        cls = NotFoundError if self.reached else NetworkError
        return cls(
            f"discovering {what} for {name} failed after {len(_prefixes(name))} "
            f"discovery URLs; last: {last}",
            hint="check the name, or fetch the image by URL or from a file",
        )


def _walk(name: str, options: FetchOptions, want: str) -> _Walk:
    from podmgr.fetch.http import HTTPStatusError

    """Visit discovery pages from ``name`` upwards until one has a matching ``want`` tag."""
    walk = _Walk()
    for prefix in _prefixes(name):
        try:
            html = _fetch_page(prefix, options)
        except HTTPStatusError as e:
            walk.reached = True
            walk.failures.append(e.message)
            continue
        except NetworkError as e:
            walk.failures.append(e.message)
            continue
        walk.reached = True
        metas = [m for m in parse_meta(html) if name.startswith(m.prefix)]
        walk.pubkeys += [m for m in metas if m.kind == "ac-discovery-pubkeys"]
        walk.found = [m for m in metas if m.kind == want]
        if walk.found:
            break
        walk.failures.append(f"https://{prefix}?ac-discovery=1 has no {want} tag for {name}")
    return walk


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def discover(app: AppString, options: FetchOptions | None = None) -> Endpoints:
    """The candidate image, signature and key URLs for ``app``, best first.

    Raises NotFoundError when the pages have no usable template, NetworkError when no
    page could be fetched.
    """
    from podmgr.fetch.http import FetchOptions

    options = options or FetchOptions()
    walk = _walk(app.name, options, "ac-discovery")
    acis: list[str] = []
    sigs: list[str] = []
    for m in walk.found:
        values = {**app.labels, "name": app.name}
        aci = render_template(m.value, {**values, "ext": "aci"})
        sig = render_template(m.value, {**values, "ext": "aci.asc"})
        # A template without {ext} cannot tell image from signature (discovery.md).
        if aci is None or sig is None or aci == sig:
            continue
        acis.append(aci)
        sigs.append(sig)
    if not acis:
        if walk.found:
            walk.failures.append(
                f"no ac-discovery template for {app.name} can be filled from labels "
                f"{', '.join(sorted(app.labels))}"
            )
        raise walk.error("images", app.name)
    return Endpoints(_unique(acis), _unique(sigs), _unique([m.value for m in walk.pubkeys]))


def discover_pubkeys(name: str, options: FetchOptions | None = None) -> list[str]:
    """The ``ac-discovery-pubkeys`` URLs for ``name`` (walking up like ``discover``)."""
    from podmgr.fetch.http import FetchOptions

    options = options or FetchOptions()
    walk = _walk(name, options, "ac-discovery-pubkeys")
    if not walk.found:
        raise walk.error("public keys", name)
    return _unique([m.value for m in walk.found])
