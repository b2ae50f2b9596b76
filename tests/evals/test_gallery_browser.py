"""index.html where people open it: headless Chromium loads every clip, plays it muted, decodes video and audio.

The check page is a copy of index.html with a script injected before ``</body>`` (same folder, so
the ``<video src>`` paths resolve and no file:// cross-origin rules apply). The script mutes and
plays every ``<video>`` and, on each media event, writes the duration, current time and
``webkit{Video,Audio}DecodedByteCount`` per clip as JSON into the DOM, which ``--dump-dom`` prints.
A media element delays the document's load event until its first frame is decoded (HTML
"delaying-the-load-event"), and Chromium's pipeline prerolls audio and video before that, so the
dump holds every clip's metadata and decoded counts; ``--virtual-time-budget`` then runs the page
a little longer (timeupdate events: playback advanced). A clip without an audio track decodes
0 audio bytes and fails the test.

Without chromium the test skips, except under ``make test`` (MM_REQUIRE_BROWSER=1), which installs it.
"""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

from evals.gallery import write_gallery
from tests.evals.gallery_fixtures import make_clips

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CHECK_SCRIPT = """<script>
const records = [];
const result = document.createElement('pre');
result.id = 'mm-result';
document.body.appendChild(result);
for (const v of document.querySelectorAll('video')) {
  const rec = {src: v.getAttribute('src'), events: []};
  records.push(rec);
  const note = (name) => {
    rec.events.push(name);
    rec.duration = v.duration;
    rec.current_time = v.currentTime;
    rec.video_bytes = v.webkitVideoDecodedByteCount;
    rec.audio_bytes = v.webkitAudioDecodedByteCount;
    if (v.error) rec.error = v.error.code + ' ' + v.error.message;
    result.textContent = JSON.stringify(records);
  };
  for (const name of ['loadedmetadata', 'loadeddata', 'playing', 'timeupdate', 'ended', 'error']) {
    v.addEventListener(name, () => note(name));
  }
  v.muted = true;
  v.play().catch((e) => { rec.play_error = String(e); note('play_error'); });
}
result.textContent = JSON.stringify(records);
</script>
"""


def chromium_command(page, profile) -> list[str]:
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=5000",
        f"--user-data-dir={profile}", "--dump-dom", page.as_uri(),
    ]  # fmt: skip


def play_in_chromium(index, profile) -> list[dict]:
    """Per ``<video>`` of ``index``: src, events seen, duration, current_time, video_bytes, audio_bytes."""
    page = index.with_name("check.html")
    page.write_text(index.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    proc = subprocess.run(chromium_command(page, profile), capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="mm-result">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no result in the dumped DOM (exit {proc.returncode}); stderr tail:\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_every_clip_plays_with_sound_in_chromium(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("MM_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium not found and MM_REQUIRE_BROWSER=1 (`make test` installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install -y chromium; `make test` installs it)")
    clips = make_clips()
    index = write_gallery(tmp_path / "gallery", clips, title="browser check")
    records = play_in_chromium(index, tmp_path / "profile")
    assert [r["src"] for r in records] == [f"{c.name}.mp4" for c in clips], records
    for c, r in zip(clips, records, strict=True):
        assert "error" not in r and "play_error" not in r, r
        seconds = len(c.frames) / c.fps
        assert seconds == pytest.approx(len(c.audio) / c.sample_rate)  # the clips are written that long
        assert r["duration"] == pytest.approx(seconds, abs=0.1), r
        assert "playing" in r["events"], r
        assert r["video_bytes"] > 0, f"{c.name}: no video decoded: {r}"
        assert r["audio_bytes"] > 0, f"{c.name}: no audio decoded (no audio track?): {r}"
