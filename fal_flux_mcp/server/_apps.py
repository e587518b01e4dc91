"""The MCP Apps (``io.modelcontextprotocol/ui``): which tools show an app, and what clients without it see.

A host that renders Apps shows a tool's result in the ``ui://`` page the tool names in
``_meta.ui.resourceUri``. Hosts that do not would only be confused by that key (and by a tool that
does nothing without a page), so a client that did not advertise the extension gets the tool list
and resource list it always got: no ``_meta.ui``, no app-only tool, no ``ui://`` resource. Tool
results are the same for everyone; the app draws them from the previews and URLs they already carry.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from mcp.server.apps import Apps, ResourceCsp, ResourcePermissions, client_supports_apps
from mcp.types import Resource, Tool

__all__ = ["APP_OF_TOOL", "GALLERY_APP", "JOB_APP", "build_apps", "client_supports_apps", "for_client"]

JOB_APP = "ui://fal-flux-mcp/job"
GALLERY_APP = "ui://fal-flux-mcp/gallery"

#: Which tools show which app. Linking another tool is one line here.
APP_OF_TOOL: dict[str, str] = {
    "generate_image": JOB_APP,
    "edit_image": JOB_APP,
    "check_status": JOB_APP,
    "open_gallery": GALLERY_APP,
}

#: Tools that are nothing but a way to open an app: not listed to clients that cannot show it.
APP_ONLY_TOOLS: frozenset[str] = frozenset({"open_gallery"})

#: fal's CDN, where finished images live; the apps load full-size images from there when the host allows.
FAL_MEDIA_DOMAINS = ["https://fal.media", "https://*.fal.media"]


def tool_meta(name: str) -> dict[str, Any] | None:
    """The ``_meta`` a tool is registered with: its app, if it has one."""
    uri = APP_OF_TOOL.get(name)
    return {"ui": {"resourceUri": uri}} if uri else None


def _static(name: str) -> str:
    return files("fal_flux_mcp.gallery").joinpath("static", name).read_text(encoding="utf-8")


def app_page(name: str) -> str:
    """An app page with the shared style and bridge inlined: one file, nothing loaded from elsewhere."""
    page = _static(name)
    for shared in ("app.css", "app-bridge.js"):
        page = page.replace(f"/*{shared}*/", _static(shared))
    return page


#: Each app page: its URI, file, name, title and description.
_PAGES = (
    (JOB_APP, "app-job.html", "job", "FLUX job", "A job's images, prompt, model, seed, size, cost and time."),
    (
        GALLERY_APP,
        "app-gallery.html",
        "gallery",
        "FLUX gallery",
        "Recent jobs by model and date, and the spend.",
    ),
)


def build_apps() -> Apps:
    """The extension with both pages, each one self-contained HTML file shipped in the package.

    Both may load images from fal's CDN, and may write to the clipboard (copying a seed).
    """
    apps = Apps()
    csp = ResourceCsp(resource_domains=FAL_MEDIA_DOMAINS)
    clipboard = ResourcePermissions(clipboard_write={})
    for uri, file, name, title, description in _PAGES:
        apps.add_html_resource(
            uri,
            app_page(file),
            name=name,
            title=title,
            description=description,
            csp=csp,
            permissions=clipboard,
            prefers_border=True,
        )
    return apps


def for_client(
    tools: list[Tool], resources: list[Resource] | None, *, apps: bool
) -> tuple[list[Tool], list[Resource] | None]:
    """What a client is shown: everything with Apps; without, the lists as they were before Apps."""
    if apps:
        return tools, resources
    plain = [_without_ui(tool) for tool in tools if tool.name not in APP_ONLY_TOOLS]
    shown = None if resources is None else [r for r in resources if not str(r.uri).startswith("ui://")]
    return plain, shown


def _without_ui(tool: Tool) -> Tool:
    meta = tool.meta
    if not meta or "ui" not in meta:
        return tool
    rest = {key: value for key, value in meta.items() if key != "ui"}
    return tool.model_copy(update={"meta": rest or None})
