"""upload_file reads only images inside the allowed folders, and every refusal says how to fix it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from fal_flux_mcp.server._uploads import (
    UploadRefused,
    _file_uri_to_path,
    decode_image_data,
    resolve_local_image,
    roots_to_dirs,
)
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


def refused(path: str | Path, allowed_dirs: list[Path], max_bytes: int = LIMIT) -> str:
    with pytest.raises(UploadRefused) as caught:
        resolve_local_image(str(path), allowed_dirs, max_bytes)
    return str(caught.value)


# --- local files ----------------------------------------------------------------------------------------


def test_image_inside_an_allowed_folder_is_accepted(allowed: Path) -> None:
    image = resolve_local_image(str(allowed / "cat.png"), [allowed], LIMIT)
    assert image.path == (allowed / "cat.png").resolve()
    assert (image.size, image.content_type, image.file_name) == (len(PNG), "image/png", "cat.png")
    assert image.read() == PNG


def test_image_in_a_subfolder_is_accepted(allowed: Path) -> None:
    (allowed / "2025" / "trip").mkdir(parents=True)
    (allowed / "2025" / "trip" / "beach.png").write_bytes(PNG)
    image = resolve_local_image(str(allowed / "2025" / "trip" / "beach.png"), [allowed], LIMIT)
    assert image.read() == PNG


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
    image = resolve_local_image(str(allowed / "favourite.png"), [allowed], LIMIT)
    assert image.path == (allowed / "cat.png").resolve()
    assert image.file_name == "favourite.png"


@posix_only
def test_allowed_folder_given_through_a_symlink_still_works(allowed: Path, tmp_path: Path) -> None:
    link = tmp_path / "pics-link"
    link.symlink_to(allowed, target_is_directory=True)
    assert resolve_local_image(str(allowed / "cat.png"), [link], LIMIT).content_type == "image/png"
    assert resolve_local_image(str(link / "cat.png"), [allowed], LIMIT).content_type == "image/png"


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
    image = resolve_local_image(str(allowed / "photo.png"), [allowed], LIMIT)
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
    assert resolve_local_image("~/Pictures/cat.png", [Path("~/Pictures")], LIMIT).size == len(PNG)


def test_file_uri_is_accepted_as_a_path(allowed: Path) -> None:
    uri = (allowed / "cat.png").as_uri()
    assert resolve_local_image(uri, [allowed], LIMIT).path == (allowed / "cat.png").resolve()


def test_file_replaced_after_the_check_is_not_read(allowed: Path) -> None:
    image = resolve_local_image(str(allowed / "cat.png"), [allowed], LIMIT)
    (allowed / "cat.png").rename(allowed / "old-cat.png")  # keeps the inode in use, so it cannot be reused
    (allowed / "cat.png").write_bytes(PNG)  # same size, different file
    with pytest.raises(UploadRefused, match="try the upload again"):
        image.read()


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
    assert _file_uri_to_path(uri, windows=True) == path
