"""A real headless Chromium (Debian's ``chromium``, driven by Playwright) for the tests of what people see.

Nothing is downloaded: Playwright drives the system browser by path. A failed test's page is kept as a
screenshot in the test's tmp_path, and its path is printed with the failure.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from PIL import Image, ImageChops, ImageStat
from playwright.async_api import Page, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def browser_page(shots: Path, *, color_scheme: str = "light") -> AsyncIterator[Page]:
    """A fresh page; if the block fails, a screenshot of the page is kept in ``shots`` (path printed)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": 1000, "height": 800},
                color_scheme=color_scheme,  # type: ignore[arg-type]
            )
            page = await context.new_page()
            page.set_default_timeout(15_000)
            try:
                yield page
            except BaseException:
                shot = shots / "failure.png"
                await page.screenshot(path=shot, full_page=True)
                print(f"screenshot of the failed page: {shot}")
                raise
        finally:
            await browser.close()


def difference(shown: bytes, expected: bytes) -> float:
    """Mean difference (0-255) between a screenshot and the image it should show, both scaled to 64x64."""
    with Image.open(io.BytesIO(shown)) as a, Image.open(io.BytesIO(expected)) as b:
        small_a = a.convert("RGB").resize((64, 64))
        small_b = b.convert("RGB").resize((64, 64))
    return sum(ImageStat.Stat(ImageChops.difference(small_a, small_b)).mean) / 3


def spread(shown: bytes) -> float:
    """Standard deviation of a screenshot's pixels: near 0 for a blank or single-colour area."""
    with Image.open(io.BytesIO(shown)) as image:
        return sum(ImageStat.Stat(image.convert("RGB")).stddev) / 3


def square(data: bytes) -> bytes:
    """The middle square of an image (PNG), as a grid that crops its tiles to squares shows it."""
    with Image.open(io.BytesIO(data)) as image:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        buffer = io.BytesIO()
        image.crop((left, top, left + side, top + side)).save(buffer, "PNG")
    return buffer.getvalue()
