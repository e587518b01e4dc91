"""upload_file reads only images inside the allowed folders, and every refusal says how to fix it."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from mcp.types import CallToolResult

from fal_flux_mcp.emulator import Emulator
from fal_flux_mcp.fal import FalClient, RetryPolicy
from fal_flux_mcp.server import build_server
from fal_flux_mcp.server._file_uris import file_uri_to_path, roots_to_dirs
from fal_flux_mcp.server._uploads import (
    LocalImage,
    UploadRefused,
    decode_image_data,
    resolve_local_image,
)
from fal_flux_mcp.settings import Settings
from tests.samples import image_bytes

LIMIT = 5_000_000
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file system features")


PNG = image_bytes()


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "Pictures"
    folder.mkdir()
    (folder / "cat.png").write_bytes(PNG)
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "secret.png").write_bytes(PNG)
    return folder


def refused(path: str | Path, allowed_dirs: list[Path], max_bytes: int = LIMIT, **options: bool) -> str:
    with pytest.raises(UploadRefused) as caught:
        resolve_local_image(str(path), allowed_dirs, max_bytes, **options).close()
    return str(caught.value)


def checked(path: str | Path, allowed_dirs: list[Path], **options: bool) -> tuple[LocalImage, bytes]:
    """The checked image (closed again) and the bytes its open descriptor holds: what would be uploaded."""
    with resolve_local_image(str(path), allowed_dirs, LIMIT, **options) as image:
        return image, os.pread(image.fileno(), image.size + 1, 0)


# --- local files ----------------------------------------------------------------------------------------


def test_image_inside_an_allowed_folder_is_accepted(allowed: Path) -> None:
    image, content = checked(allowed / "cat.png", [allowed])
    assert image.path == (allowed / "cat.png").resolve()
    assert (image.size, image.content_type, image.file_name) == (len(PNG), "image/png", "cat.png")
    assert content == PNG


def test_image_in_a_subfolder_is_accepted(allowed: Path) -> None:
    (allowed / "2025" / "trip").mkdir(parents=True)
    (allowed / "2025" / "trip" / "beach.png").write_bytes(PNG)
    assert checked(allowed / "2025" / "trip" / "beach.png", [allowed])[1] == PNG


def test_file_outside_is_refused_with_the_fix(allowed: Path, outside: Path) -> None:
    message = refused(outside / "secret.png", [allowed])
    assert "outside the allowed directories" in message
    assert str(allowed) in message
    assert "FLUX_MCP_ALLOWED_DIRS" in message and "MCP root" in message


def test_refusal_does_not_reveal_whether_an_outside_file_exists(allowed: Path, outside: Path) -> None:
    existing = refused(outside / "secret.png", [allowed])
    missing = refused(outside / "nothing-here.png", [allowed])
    assert existing.replace("secret", "X") == missing.replace("nothing-here", "X")


def test_missing_file_inside_says_it_does_not_exist(allowed: Path) -> None:
    assert "does not exist" in refused(allowed / "dog.png", [allowed])


def test_dot_dot_cannot_climb_out(allowed: Path, outside: Path) -> None:
    sneaky = f"{allowed}{os.sep}..{os.sep}{outside.name}{os.sep}secret.png"
    assert "outside the allowed directories" in refused(sneaky, [allowed])


def test_a_folder_with_a_similar_name_is_not_inside(allowed: Path, tmp_path: Path) -> None:
    lookalike = tmp_path / "Pictures-private"
    lookalike.mkdir()
    (lookalike / "x.png").write_bytes(PNG)
    assert "outside the allowed directories" in refused(lookalike / "x.png", [allowed])


@posix_only
def test_symlink_pointing_out_is_refused(allowed: Path, outside: Path) -> None:
    (allowed / "innocent.png").symlink_to(outside / "secret.png")
    (allowed / "folder").symlink_to(outside, target_is_directory=True)
    assert "outside the allowed directories" in refused(allowed / "innocent.png", [allowed])
    assert "outside the allowed directories" in refused(allowed / "folder" / "secret.png", [allowed])


@posix_only
def test_symlink_within_the_allowed_folder_is_fine(allowed: Path) -> None:
    (allowed / "favourite.png").symlink_to(allowed / "cat.png")
    image, _ = checked(allowed / "favourite.png", [allowed])
    assert image.path == (allowed / "cat.png").resolve()
    assert image.file_name == "favourite.png"


@posix_only
def test_allowed_folder_given_through_a_symlink_still_works(allowed: Path, tmp_path: Path) -> None:
    link = tmp_path / "pics-link"
    link.symlink_to(allowed, target_is_directory=True)
    assert checked(allowed / "cat.png", [link])[0].content_type == "image/png"
    assert checked(link / "cat.png", [allowed])[0].content_type == "image/png"


def test_folder_is_refused(allowed: Path) -> None:
    assert "is a folder" in refused(allowed, [allowed])


@posix_only
def test_pipe_is_refused_without_hanging(allowed: Path) -> None:
    os.mkfifo(allowed / "pipe.png")
    assert "not a regular file" in refused(allowed / "pipe.png", [allowed])


def test_too_large_is_refused_with_the_limit(allowed: Path) -> None:
    message = refused(allowed / "cat.png", [allowed], max_bytes=len(PNG) - 1)
    assert "upload limit" in message and "FLUX_MCP_UPLOAD_MAX_BYTES" in message


def test_empty_file_is_refused(allowed: Path) -> None:
    (allowed / "empty.png").write_bytes(b"")
    assert "empty" in refused(allowed / "empty.png", [allowed])


def test_text_named_png_is_refused_listing_accepted_types(allowed: Path) -> None:
    (allowed / "notes.png").write_text("shopping list: milk, eggs")
    message = refused(allowed / "notes.png", [allowed])
    assert "not an image fal accepts" in message
    assert "JPEG, PNG, WebP, GIF or AVIF" in message


def test_unsupported_image_type_is_named(allowed: Path) -> None:
    (allowed / "scan.png").write_bytes(image_bytes("TIFF"))
    message = refused(allowed / "scan.png", [allowed])
    assert "TIFF" in message and "convert" in message


def test_type_and_name_follow_the_content_not_the_extension(allowed: Path) -> None:
    (allowed / "photo.png").write_bytes(image_bytes("JPEG"))
    image, _ = checked(allowed / "photo.png", [allowed])
    assert (image.content_type, image.file_name) == ("image/jpeg", "photo.jpg")


def test_no_allowed_folders_explains_how_to_configure_them(allowed: Path) -> None:
    for configured in ([], [Path("relative/pictures")]):
        message = refused(allowed / "cat.png", configured)
        assert "no folders are allowed" in message
        assert "FLUX_MCP_ALLOWED_DIRS" in message and "MCP root" in message and "data" in message


def test_relative_path_is_refused_explaining_why(allowed: Path) -> None:
    message = refused("cat.png", [allowed])
    assert "relative path" in message and "working directory" in message
    assert str(allowed / "cat.png") in message


def test_home_shorthand_is_expanded(allowed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    assert checked("~/Pictures/cat.png", [Path("~/Pictures")])[0].size == len(PNG)


def test_file_uri_is_accepted_as_a_path(allowed: Path) -> None:
    uri = (allowed / "cat.png").as_uri()
    assert checked(uri, [allowed])[0].path == (allowed / "cat.png").resolve()


def test_file_replaced_after_the_check_is_not_read(allowed: Path) -> None:
    with resolve_local_image(str(allowed / "cat.png"), [allowed], LIMIT) as image:
        (allowed / "cat.png").unlink()
        (allowed / "cat.png").write_bytes(image_bytes("JPEG"))  # another file under the checked name
        assert os.pread(image.fileno(), image.size + 1, 0) == PNG


# --- the checked file is the file uploaded, whatever its name points to meanwhile ---------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists open files in /proc")


def secret_like(size: int) -> bytes:
    """A private key's worth of bytes, as large as the image, so that reading it in its place 'works'."""
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n"
    return (key * (size // len(key) + 1))[:size]


def swap_for_symlink(path: Path, target: Path) -> None:
    """Atomically replace ``path`` by a symlink to ``target``, as an attacker racing the upload would."""
    link = path.with_name(path.name + ".swap")
    link.symlink_to(target)
    os.replace(link, path)


@contextmanager
def when_emulator_faults(action: Callable[[], None]) -> Iterator[threading.Event]:
    """Run ``action`` inside the emulator as it answers an injected fault, i.e. while the client has
    been told to wait and the upload has not read a byte yet; the event says it ran."""
    ran = threading.Event()
    errors: list[BaseException] = []

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("fault ") and not ran.is_set():
                try:
                    action()
                except BaseException as exc:  # re-raised in the test below
                    errors.append(exc)
                ran.set()

    logger = logging.getLogger("fal_flux_mcp.emulator")
    hook, level = Hook(logging.DEBUG), logger.level
    logger.addHandler(hook)
    logger.setLevel(logging.DEBUG)
    try:
        yield ran
    finally:
        logger.removeHandler(hook)
        logger.setLevel(level)
    if errors:
        raise errors[0]


def descriptors_on(identity: tuple[int, int]) -> list[str]:
    """This process's open descriptors on the file ``(st_dev, st_ino)``, unlinked or not (Linux only)."""
    if not sys.platform.startswith("linux"):
        return []
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            info = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == identity:
            found.append(name)
    return found


def identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


async def stored(url: str) -> bytes:
    async with httpx.AsyncClient() as http:
        answer = await http.get(url)
    answer.raise_for_status()
    return answer.content


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture
def attack(settings: Settings, tmp_path: Path) -> tuple[Path, Path, bytes]:
    """An image inside the allowed folder, a same-sized secret outside it, and the image's bytes."""
    picture = settings.allowed_dirs[0] / "holiday.png"
    content = image_bytes(size=(40, 30))
    picture.write_bytes(content)
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.write_bytes(secret_like(len(content)))
    return picture, secret, content


@posix_only
def test_symlink_swapped_in_as_the_file_is_opened_is_refused(
    allowed: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def racing_open(path: object, flags: int, *args: int) -> int:
        if Path(str(path)) == (allowed / "cat.png").resolve():  # the check is done; the open comes next
            swap_for_symlink(allowed / "cat.png", outside / "secret.png")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", racing_open)
    assert "replaced by a symbolic link" in refused(allowed / "cat.png", [allowed])


@linux_only
def test_folder_swapped_for_a_symlink_during_the_check_is_refused(
    allowed: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (allowed / "album").mkdir()
    (allowed / "album" / "secret.png").write_bytes(PNG)
    real_stat, checked_path, swapped = os.stat, str((allowed / "album" / "secret.png").resolve()), []

    def racing_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path) == checked_path and not swapped:  # resolved, about to be stat'ed and opened
            swapped.append(True)
            (allowed / "album").rename(allowed / "old-album")
            (allowed / "album").symlink_to(outside, target_is_directory=True)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", racing_stat)
    assert "outside the allowed directories" in refused(allowed / "album" / "secret.png", [allowed])


@posix_only
def test_hard_link_is_refused_unless_allowed(allowed: Path, outside: Path) -> None:
    os.link(outside / "secret.png", allowed / "linked.png")
    message = refused(allowed / "linked.png", [allowed])
    assert "2 hard links" in message and "any file on the filesystem" in message
    assert "FLUX_MCP_ALLOW_HARD_LINKS=true" in message and "copy" in message
    assert checked(allowed / "linked.png", [allowed], allow_hard_links=True)[1] == PNG


@posix_only
@pytest.mark.anyio
async def test_upload_file_tool_refuses_hard_links_unless_the_setting_allows(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    _, secret, _ = attack
    linked = settings.allowed_dirs[0] / "notes.png"
    os.link(secret, linked)
    secret.write_bytes(PNG)  # the same file under both names
    async with Client(build_server(settings)) as client:
        refused_upload = await client.call_tool("upload_file", {"path": str(linked)})
    assert refused_upload.is_error and "FLUX_MCP_ALLOW_HARD_LINKS=true" in text_of(refused_upload)
    assert emulator.counters["upload"] == 0
    settings.allow_hard_links = True
    async with Client(build_server(settings)) as client:
        uploaded = await client.call_tool("upload_file", {"path": str(linked)})
    assert not uploaded.is_error, text_of(uploaded)
    assert await stored(uploaded.structured_content["url"]) == PNG


@posix_only
@pytest.mark.anyio
async def test_upload_file_tool_sends_the_checked_file_not_a_symlink_swapped_in_while_it_waits(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    picture, secret, content = attack
    emulator.inject("token", "429", count=1, retry_after=0.2)  # fal asks the upload to wait
    checked_file = identity(picture)
    async with Client(build_server(settings)) as client:
        with when_emulator_faults(lambda: swap_for_symlink(picture, secret)) as swapped:
            result = await client.call_tool("upload_file", {"path": str(picture)})
        assert swapped.is_set() and picture.is_symlink()
        assert not result.is_error, text_of(result)
        assert await stored(result.structured_content["url"]) == content
        assert descriptors_on(checked_file) == []  # closed once the upload was over
    assert emulator.counters["token"] == 2 and emulator.counters["upload"] == 1


@posix_only
@pytest.mark.anyio
async def test_image_url_sends_the_checked_file_not_a_symlink_swapped_in_while_it_waits(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    picture, secret, content = attack
    emulator.config.job_seconds = 0.05
    emulator.inject("token", "429", count=1, retry_after=0.2)
    async with Client(build_server(settings)) as client:
        with when_emulator_faults(lambda: swap_for_symlink(picture, secret)) as swapped:
            result = await client.call_tool(
                "generate_image",
                {"prompt": "make it night", "model": "fal-ai/flux-pro/kontext", "image_url": str(picture)},
            )
    assert swapped.is_set() and not result.is_error, text_of(result)
    (job,) = emulator.jobs()
    assert await stored(job.input["image_url"]) == content


@posix_only
@pytest.mark.anyio
async def test_multipart_upload_sends_the_checked_file_not_a_symlink_swapped_in_while_it_waits(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    picture, secret, _ = attack
    content = PNG + bytes(range(256)) * 1200  # about 300 KB: five parts of 64 KiB
    picture.write_bytes(content)
    secret.write_bytes(secret_like(len(content)))
    emulator.inject("token", "429", count=1, retry_after=0.2)
    with resolve_local_image(str(picture), settings.allowed_dirs, LIMIT) as image:
        retry = RetryPolicy(base_delay=0.01, max_delay=0.05)
        async with FalClient(
            emulator.key, base_url=emulator.url, retry=retry, multipart_threshold=100_000, part_size=64 * 1024
        ) as fal:
            with when_emulator_faults(lambda: swap_for_symlink(picture, secret)) as swapped:
                url = await fal.upload_from_file(image, size=image.size, file_name=image.file_name)
    assert swapped.is_set() and emulator.counters["multipart_part"] == 5
    assert hashlib.sha256(await stored(url)).digest() == hashlib.sha256(content).digest()


@posix_only
@pytest.mark.anyio
async def test_upload_file_tool_multipart_at_fals_threshold_sends_the_checked_file(
    settings: Settings, emulator: Emulator, tmp_path: Path
) -> None:
    # The server's client uploads in parts above 100 MiB, as fal's does; sparse files keep this cheap.
    size = 100 * 1024 * 1024 + 4096
    settings.upload_max_bytes = size
    picture, secret = settings.allowed_dirs[0] / "panorama.png", tmp_path / "id_ed25519"
    for path, head in ((picture, PNG), (secret, secret_like(len(PNG)))):
        with path.open("wb") as file:
            file.write(head)
            file.truncate(size)
    with picture.open("rb") as file:
        expected = hashlib.file_digest(file, "sha256").hexdigest()
    emulator.inject("token", "429", count=1, retry_after=0.2)
    async with Client(build_server(settings)) as client:
        with when_emulator_faults(lambda: swap_for_symlink(picture, secret)) as swapped:
            result = await client.call_tool("upload_file", {"path": str(picture)})
    assert swapped.is_set() and not result.is_error, text_of(result)
    assert emulator.counters["multipart_part"] == 11
    digest = hashlib.sha256()
    async with httpx.AsyncClient() as http, http.stream("GET", result.structured_content["url"]) as answer:
        async for chunk in answer.aiter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == expected


@posix_only
@pytest.mark.anyio
async def test_fallback_upload_route_sends_the_checked_file_too(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    picture, secret, content = attack
    emulator.inject("token", "429", count=1, retry_after=0.2)
    emulator.inject("upload", "503_fal", count=1)  # the CDN route fails: initiate + signed PUT instead
    async with Client(build_server(settings)) as client:
        with when_emulator_faults(lambda: swap_for_symlink(picture, secret)) as swapped:
            result = await client.call_tool("upload_file", {"path": str(picture)})
    assert swapped.is_set() and not result.is_error, text_of(result)
    assert emulator.counters["signed_put"] == 1
    assert await stored(result.structured_content["url"]) == content


@linux_only
@pytest.mark.anyio
async def test_the_checked_file_is_closed_when_fal_refuses_the_upload(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    picture, _, _ = attack
    emulator.inject("upload", "500", count=1)
    emulator.inject("initiate", "500", count=1)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("upload_file", {"path": str(picture)})
        assert result.is_error and "upload" in text_of(result).lower()
        assert descriptors_on(identity(picture)) == []


# --- inline data ----------------------------------------------------------------------------------------


def test_data_uri_is_accepted() -> None:
    image = decode_image_data("data:image/png;base64," + base64.b64encode(PNG).decode(), "cat.png", LIMIT)
    assert (image.data, image.content_type, image.file_name) == (PNG, "image/png", "cat.png")


def test_bare_base64_is_accepted_even_wrapped_or_urlsafe() -> None:
    jpeg = image_bytes("JPEG")
    for text in (
        base64.b64encode(jpeg).decode(),
        base64.encodebytes(jpeg).decode(),  # wrapped at 76 characters
        base64.urlsafe_b64encode(jpeg).decode().rstrip("="),
    ):
        image = decode_image_data(text, None, LIMIT)
        assert (image.data, image.content_type, image.file_name) == (jpeg, "image/jpeg", "image.jpg")


def test_declared_type_does_not_override_the_content() -> None:
    text = "data:image/png;base64," + base64.b64encode(image_bytes("WEBP")).decode()
    image = decode_image_data(text, "holiday.png", LIMIT)
    assert (image.content_type, image.file_name) == ("image/webp", "holiday.webp")


def test_file_name_is_reduced_to_a_safe_basename() -> None:
    image = decode_image_data(base64.b64encode(PNG).decode(), "../../etc/Crème brûlée!.PNG", LIMIT)
    assert image.file_name == "Creme-brulee.png"
    nameless = decode_image_data(base64.b64encode(PNG).decode(), "C:\\Users\\u\\..", LIMIT)
    assert nameless.file_name == "image.png"


def test_invalid_base64_is_refused() -> None:
    with pytest.raises(UploadRefused, match="not valid base64"):
        decode_image_data("this is *not* base64!", "x.png", LIMIT)


def test_empty_data_is_refused() -> None:
    for text in ("", "   \n", "data:image/png;base64,"):
        with pytest.raises(UploadRefused, match="empty"):
            decode_image_data(text, None, LIMIT)


def test_oversize_data_is_refused_before_decoding() -> None:
    # Not valid base64 either: the size check must come first, from the encoded length alone.
    with pytest.raises(UploadRefused, match="upload limit"):
        decode_image_data("A" * 2_000_000 + "!", None, max_bytes=1_000_000)


def test_non_image_data_is_refused() -> None:
    with pytest.raises(UploadRefused, match="not an image fal accepts"):
        decode_image_data(base64.b64encode(b"%PDF-1.7 a document").decode(), "doc.png", LIMIT)


def test_data_uri_that_is_not_base64_is_refused() -> None:
    with pytest.raises(UploadRefused, match="not base64-encoded"):
        decode_image_data("data:image/svg+xml,%3Csvg%3E", None, LIMIT)


def test_url_or_path_in_data_gets_pointed_to_the_right_parameter() -> None:
    with pytest.raises(UploadRefused, match="URL"):
        decode_image_data("https://example.com/cat.png", None, LIMIT)
    with pytest.raises(UploadRefused, match="`path`"):
        decode_image_data("/home/u/Pictures/cat.png", None, LIMIT)


# --- MCP roots ------------------------------------------------------------------------------------------


@posix_only
def test_roots_become_folders() -> None:
    uris = [
        "file:///home/u/Pictures",
        "file:///home/u/My%20Photos/",
        "https://example.com/not-a-folder",
        "file://localhost/srv/shared",
        "file:///home/u/Pictures",
        "file:///C:/Users/u",  # a Windows drive means nothing on this system
    ]
    assert roots_to_dirs(uris) == [Path("/home/u/Pictures"), Path("/home/u/My Photos"), Path("/srv/shared")]


def test_roots_round_trip_a_real_folder(allowed: Path) -> None:
    assert roots_to_dirs([allowed.as_uri()]) == [allowed]


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///C:/Users/u/Pictures", "C:\\Users\\u\\Pictures"),
        ("file:///c%3A/Users/u/My%20Pictures", "C:\\Users\\u\\My Pictures"),
        ("file:///D|/images", "D:\\images"),
        ("file://C:/work", "C:\\work"),
        ("file:///C:", "C:\\"),
        ("file://fileserver/share/art", "\\\\fileserver\\share\\art"),
        ("untitled:Untitled-1", None),
    ],
)
def test_windows_root_forms(uri: str, path: str | None) -> None:
    assert file_uri_to_path(uri, windows=True) == path


@linux_only
@pytest.mark.anyio
async def test_the_checked_file_is_closed_when_the_client_gives_up_on_the_upload(
    settings: Settings, emulator: Emulator, attack: tuple[Path, Path, bytes]
) -> None:
    picture, _, _ = attack
    checked_file = identity(picture)
    emulator.inject("token", "429", count=1, retry_after=20)  # the upload would hold the file for 20 s
    async with Client(build_server(settings)) as client:
        with when_emulator_faults(lambda: None) as waiting:
            async with anyio.create_task_group() as group:
                group.start_soon(client.call_tool, "upload_file", {"path": str(picture)})
                assert await anyio.to_thread.run_sync(waiting.wait, 5)
                assert descriptors_on(checked_file)  # held open while the upload waits
                group.cancel_scope.cancel()
        with anyio.fail_after(5):  # the server hears of the cancellation asynchronously
            while descriptors_on(checked_file):
                await anyio.sleep(0.01)
    assert emulator.counters["upload"] == 0
