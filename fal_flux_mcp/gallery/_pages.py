"""The web gallery's pages as HTML text: the grid of recent images, one job, and spend by day and model.

Rendered here with escaping, in one layout (``static/page.html``); the script (``static/gallery.js``)
only adds the live update, keyboard moves in the grid, copying and the theme switch, so every page
works without it.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from importlib.resources import files
from string import Template

from fal_flux_mcp.gallery._data import DaySpend
from fal_flux_mcp.server._ledger import usd
from fal_flux_mcp.server._schemas import ImageInfo, JobResult

BASE = "/gallery"


def static_file(name: str) -> bytes:
    """A file of ``static/`` (the layout, the style sheet, the script)."""
    return files("fal_flux_mcp.gallery").joinpath("static", name).read_bytes()


def page(title: str, body: str, *, section: str = "images") -> str:
    """``body`` in the layout, with the navigation marking ``section`` as the current one."""
    layout = Template(static_file("page.html").decode("utf-8"))
    current = ' aria-current="page"'
    return layout.substitute(
        title=escape(title),
        body=body,
        images_current=current if section == "images" else "",
        spend_current=current if section == "spend" else "",
    )


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    local = moment.astimezone()
    return f'<time datetime="{moment.isoformat()}">{local:%Y-%m-%d %H:%M}</time>'


def _alt(job: JobResult, image: ImageInfo) -> str:
    """Alt text: the prompt, which is what the picture was asked to show."""
    prompt = job.prompt.strip() or "an image"
    return escape(prompt if len(job.images) == 1 else f"{prompt} (image {image.index + 1})")


def _facts(job: JobResult) -> str:
    parts = [escape(job.model)]
    if job.seed is not None:
        parts.append(f"seed {job.seed}")
    if job.cost_usd is not None:
        parts.append(usd(job.cost_usd))
    parts.append(_when(job.completed_at or job.created_at))
    return " · ".join(part for part in parts if part)


def _shown(value: object) -> str:
    """An argument as it was sent: strings bare, the rest as JSON (true, not Python's True)."""
    return value if isinstance(value, str) else json.dumps(value)


def card(job: JobResult, image: ImageInfo) -> str:
    """One image in the grid: the preview, linking to its job, with prompt, model, seed, cost and date."""
    job_id = escape(job.job_id)
    return (
        f'<li class="card" data-job="{job_id}">'
        f'<a href="{BASE}/jobs/{job_id}#image-{image.index}">'
        f'<img src="{BASE}/images/{job_id}/{image.index}?preview=1" alt="{_alt(job, image)}" '
        f'width="{image.width or 512}" height="{image.height or 512}" loading="lazy"></a>'
        f'<div class="meta"><p class="prompt">{escape(job.prompt)}</p>'
        f'<p class="muted">{_facts(job)}</p></div></li>'
    )


def cards(job: JobResult) -> str:
    """Every image of a job as grid cards."""
    return "".join(card(job, image) for image in job.images)


def grid(jobs: list[JobResult], since: str) -> str:
    """The main page: recent images, newest first, updated live from ``since``."""
    items = "".join(cards(job) for job in jobs)
    empty = "" if items else '<p class="empty">No images yet: they appear here as soon as a job finishes.</p>'
    return page(
        "Recent images",
        f'<h1>Recent images</h1><p id="live" class="muted" role="status" aria-live="polite"></p>{empty}'
        f'<ul id="grid" class="grid" data-since="{escape(since)}" aria-label="Recent images">{items}</ul>',
    )


def job_page(
    job: JobResult, arguments: dict[str, object], call: str, logs: list[str], why: str | None
) -> str:
    """One job: every image at full size, the arguments, the logs and the tool call that remakes it."""
    figures = []
    for image in job.images:
        size = f"{image.width} × {image.height}" if image.width else ""
        saved = f"saved at <code>{escape(image.path)}</code>" if image.path else escape(image.save_state)
        full = f"{BASE}/images/{escape(job.job_id)}/{image.index}"
        figures.append(
            f'<figure id="image-{image.index}"><a href="{full}">'
            f'<img src="{full}" alt="{_alt(job, image)}" width="{image.width or 1024}" '
            f'height="{image.height or 1024}"></a>'
            f"<figcaption>Image {image.index + 1} of {len(job.images)}, {size}; {saved}; "
            f'<a href="{escape(image.url)}" rel="noreferrer">fal\'s copy</a></figcaption></figure>'
        )
    rows = "".join(
        f"<dt>{escape(name)}</dt><dd><code>{escape(_shown(value))}</code></dd>"
        for name, value in arguments.items()
    )
    log_text = (
        f"<pre>{escape(chr(10).join(logs))}</pre>"
        if logs
        else f'<p class="muted">{escape(why or "fal kept no log lines for this job.")}</p>'
    )
    source = f" · price from {escape(job.price_source)}" if job.price_source else ""
    body = (
        f"<h1>{escape(job.prompt[:80] or job.job_id)}</h1>"
        f'<p class="muted">Job <code>{escape(job.job_id)}</code> · {escape(job.status)} · {_facts(job)}'
        f"{source}</p>"
        f"{''.join(figures) or f'<p>{escape(job.error or job.message)}</p>'}"
        f'<h2>Arguments</h2><dl class="arguments">{rows}</dl>'
        f'<h2>Tool call</h2><pre id="call">{escape(call)}</pre>'
        f'<button type="button" class="copy" data-copy="call">Copy as tool call</button>'
        f'<span class="muted copied" role="status" aria-live="polite"></span>'
        f"<h2>Logs</h2>{log_text}"
    )
    return page(job.prompt[:60] or job.job_id, body)


def spend_page(days: list[DaySpend], note: str) -> str:
    """Spend per day and model over the last 30 days, and the total per model."""
    if not days:
        body = '<h1>Spend</h1><p class="empty">Nothing spent in the last 30 days.</p>'
        return page("Spend", body, section="spend")
    rows = []
    totals: dict[str, float] = {}
    for day in days:
        models = sorted(day.by_model.items())
        for position, (model, spent) in enumerate(models):
            totals[model] = totals.get(model, 0.0) + spent
            head = (
                f'<th scope="row" rowspan="{len(models)}">{day.day:%Y-%m-%d}<br>'
                f'<span class="muted">{usd(day.total)}</span></th>'
                if position == 0
                else ""
            )
            rows.append(f"<tr>{head}<td>{escape(model)}</td><td class='usd'>{usd(spent)}</td></tr>")
    by_model = "".join(
        f"<tr><th scope='row'>{escape(model)}</th><td class='usd'>{usd(spent)}</td></tr>"
        for model, spent in sorted(totals.items(), key=lambda item: -item[1])
    )
    body = (
        "<h1>Spend</h1>"
        f'<p>Last 30 days: <strong>{usd(sum(totals.values()))}</strong>. <span class="muted">{escape(note)}</span></p>'
        '<h2 id="by-day">By day</h2><table aria-labelledby="by-day"><thead><tr><th scope="col">Day</th>'
        '<th scope="col">Model</th><th scope="col">Spent</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<h2 id="by-model">By model</h2><table aria-labelledby="by-model"><thead><tr><th scope="col">Model</th>'
        f'<th scope="col">Spent</th></tr></thead><tbody>{by_model}</tbody></table>'
    )
    return page("Spend", body, section="spend")


def refusal(reason: str) -> str:
    """The page for a request without the token."""
    return page("Token needed", f"<h1>Token needed</h1><p>{escape(reason)}</p>")
