"""Fault suite (issue 13), inputs: pictures, messages and the dissect job, as a user meets them.

Each case: one clear message naming the value, raised before the expensive work, and
nothing left behind (no figure, no hook). References: transformers' ``smart_resize`` and
``load_image`` (what the processor and the server do), PIL's decoder limit, direct counts.
"""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import load_image as transformers_load_image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

import anatomy
import anatomy.dissect
import anatomy.inputs
from anatomy.__main__ import main
from anatomy.inputs import DEFAULT_MAX_PIXELS, load_image
from anatomy.serving import bridge, chat_messages, image_url
from anatomy.serving.bridge import check_orientation


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: what a decompression bomb shows first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory):
    """A 12 MP phone photo (4032 x 3024 JPEG), the issue's case."""
    path = tmp_path_factory.mktemp("photos") / "phone.jpg"
    anatomy.demo_image(3024, 4032).save(path, quality=70)
    return path


@pytest.fixture
def no_model_runs(monkeypatch):
    """Make loading a model or capturing fail loudly: a check that passes proves it came first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the expensive work started before the check")

    monkeypatch.setattr(anatomy.dissect, "load", forbidden)
    monkeypatch.setattr(anatomy.dissect, "capture", forbidden)


def test_phone_photo_is_scaled_to_max_pixels_and_the_report_says_so(phone_photo):
    report = anatomy.dissect.dissect(phone_photo, "tiny", max_pixels=30_000)
    height, width = smart_resize(3024, 4032, 28, min_pixels=28 * 28, max_pixels=30_000)  # the processor's rule
    assert f"image of 4032x3024 px (12.2 MP) scaled to {width}x{height} px" in report
    assert f"vision patches (14x14 px)      {(height // 14) * (width // 14)}\n" in report
    with pytest.warns(UserWarning, match="scaled to"):
        width, height = load_image(phone_photo).size  # what encode() and the notebooks' helpers read
    assert (height, width) == smart_resize(3024, 4032, 28, min_pixels=28 * 28, max_pixels=DEFAULT_MAX_PIXELS)


def test_phone_photo_over_budget_is_refused_before_the_model_runs(phone_photo, tmp_path, monkeypatch, capsys):
    """The command line without the pixel cap: one line naming the estimate and the knobs, exit 2, no figure."""
    monkeypatch.setattr(anatomy.dissect, "capture", None)  # the model never runs: capture is never reached
    out = tmp_path / "figures"
    assert main(["dissect", str(phone_photo), "--model", "tiny", "--max-pixels", "0", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "GiB" in lines[0] and "--max-pixels" in lines[0] and "--budget-gib" in lines[0]
    estimate = float(lines[0].split("about ")[1].split(" GiB")[0])
    height, width = smart_resize(3024, 4032, 28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28)  # released
    patches = (height // 14) * (width // 14)
    assert estimate * 2**30 > 3 * patches**2 * 4  # at least the full-attention map and its scores, float32
    assert not out.exists()


@pytest.mark.parametrize("case", ["file", "under a file", "empty"])
def test_bad_out_is_one_line_before_the_job(case, tmp_path, phone_photo, no_model_runs, capsys):
    (tmp_path / "taken").write_text("a file")
    out = {"file": tmp_path / "taken", "under a file": tmp_path / "taken" / "figures", "empty": ""}[case]
    assert main(["dissect", str(phone_photo), "--model", "tiny", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anatomy dissect: out=")
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (root ignores chmod) mounted in a private namespace, reached through /proc/PID/root."""
    if sys.platform != "linux":
        pytest.skip("a read-only directory for this test needs Linux (unshare, mount, /proc/PID/root)")
    (tmp_path / "ro").mkdir()
    script = f"mount -t tmpfs -o ro tmpfs {tmp_path}/ro && echo ready && exec sleep 120"
    holder = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)  # fmt: skip
    try:
        if holder.stdout.readline().strip() != "ready":
            pytest.skip("unshare -m and mount are not allowed here: no way to make a read-only directory for root")
        yield f"/proc/{holder.pid}/root{tmp_path}/ro"
    finally:
        holder.kill()
        holder.wait()


def test_read_only_out_is_one_line_before_the_job(read_only_dir, phone_photo, no_model_runs, capsys):
    assert main(["dissect", str(phone_photo), "--out", f"{read_only_dir}/figures"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"anatomy dissect: out='{read_only_dir}/figures': cannot write in '{read_only_dir}' (Read-only file system)"]


@pytest.mark.parametrize("side", [30000, 10000])  # above PIL's error limit (179 MP); above its warning (89 MP)
def test_decompression_bomb_is_one_clear_error(side, tmp_path, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
        load_image(path)
    if side == 30000:  # what PIL refuses outright; between the limits the server would decode it
        with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
            image_url(path)  # the serving helpers inline a file as a data URL
    assert main(["dissect", str(path), "--model", "tiny"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_urls_are_read_with_limits_or_refused_in_one_short_line(tmp_path, monkeypatch):
    picture = anatomy.demo_image(84, 56)
    picture.save(tmp_path / "p.png")
    data_url = image_url(picture)  # what the serving helpers send: a base64 PNG
    for url in (data_url, f"file://{tmp_path}/p.png"):
        assert np.array_equal(np.asarray(load_image(url)), np.asarray(picture))
    assert image_url(f"file://{tmp_path}/p.png") == image_url(tmp_path / "p.png")  # the serving side too
    monkeypatch.setattr(anatomy.inputs, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(ValueError) as caught:
        load_image("data:image/png;base64," + "A" * 5_000_000)
    assert len(str(caught.value)) < 200 and "5,000,022 characters" in str(caught.value)
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        load_image(f"file://{tmp_path}/nothing.png")


def test_hung_image_fetch_times_out_in_the_local_helpers(silent_url, monkeypatch):
    """A loopback socket that accepts and never answers: the bridge (what where_it_looked uses) gives up
    after one fetch with the timeout, never a retry loop that could wait forever."""
    monkeypatch.setattr(anatomy.inputs, "FETCH_TIMEOUT", 1.0)
    fetches, urlopen = [], anatomy.inputs.urllib.request.urlopen

    def counted(url, timeout):
        fetches.append(timeout)
        return urlopen(url, timeout=timeout)

    monkeypatch.setattr(anatomy.inputs.urllib.request, "urlopen", counted)
    with pytest.raises(ValueError, match="could not be fetched in 1 s"):
        bridge(anatomy.load("tiny").processor, chat_messages("What is it?", images=[f"{silent_url}/x.png"]))
    assert fetches == [1.0]


def test_arrays_floats_in_0_1_are_scaled_and_out_of_range_refused():
    floats = np.random.default_rng(0).random((28, 56, 3))
    assert np.array_equal(np.asarray(load_image(floats)), np.round(floats * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(load_image(np.full((28, 28, 3), 200, np.int64))), np.full((28, 28, 3), 200))
    for bad, shown in ((np.full((28, 28, 3), 300), "[300.0, 300.0]"), (floats * 2, "floats in [0, 1]"),
                       (np.full((28, 28, 3), np.nan), "nan")):  # fmt: skip
        with pytest.raises(ValueError, match=shown.replace("[", r"\[").replace("]", r"\]")):
            load_image(bad)


def test_exif_orientation_is_one_rule_here_and_in_the_server(tmp_path):
    """A portrait phone photo stored landscape with EXIF orientation 6: upright on both sides, checked by the bridge."""
    stored = anatomy.demo_image(100, 200)  # 200 px wide, 100 high
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    path = tmp_path / "portrait.jpg"
    path.write_bytes(buffer.getvalue())
    ours, servers = load_image(path), transformers_load_image(str(path))  # the server's reader
    assert ours.size == servers.size == (100, 200)
    assert np.array_equal(np.asarray(ours), np.asarray(servers))
    messages = chat_messages("What is it?", images=[path])
    assert bridge(anatomy.load("tiny").processor, messages).image_sizes == [(100, 200)]
    with pytest.raises(ValueError, match="server reads it as 100x200 px, this side as 200x100"):
        check_orientation(messages, [Image.open(path)])  # a side that ignored the EXIF rule


@pytest.mark.parametrize("source, hint", [("8B", "'7B' or '3B'"), ("7b", "'7B'"), ("TINY", "'tiny'")])
def test_unknown_source_names_suggest_sources(source, hint):
    with pytest.raises(ValueError, match=f"no model source '{source}': did you mean {hint}\\?.*'toy', 'tiny', '3B'"):
        anatomy.load(source)


def test_config_json_with_bad_json_is_reported_as_such(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl",')
    with pytest.raises(ValueError, match="config.json' is not valid JSON"):
        anatomy.load(str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    ({"sites": None}, "sites must be a site name or a non-empty list"),
    ({"dtype": torch.int8}, "dtype=torch.int8; expected a floating torch dtype"),
])  # fmt: skip
def test_capture_refuses_bad_arguments_and_leaves_no_hook(tiny, kwargs, message):
    before = _hooks(tiny.model)  # transformers may hold its own (output recording)
    with pytest.raises(ValueError, match=message):
        with anatomy.capture(tiny, **kwargs):
            pass
    assert _hooks(tiny.model) == before


def test_capture_on_a_skeleton_is_one_clear_error():
    skeleton = anatomy.load("7B")
    with pytest.raises(ValueError, match="skeleton on the meta device"):
        with anatomy.capture(skeleton, "decoder.layers.0.output"):
            pass
    assert _hooks(skeleton.model) == 0
