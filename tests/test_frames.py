from __future__ import annotations

from dropbox_daemon.render.media.frame_math import (
    frame_count,
    output_size,
    pingpong_index,
    resampled_range,
)


def test_pingpong_bounces_without_repeating_ends() -> None:
    assert [pingpong_index(i, 4) for i in range(12)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert [pingpong_index(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [pingpong_index(i, 1) for i in range(3)] == [0, 0, 0]


def test_pingpong_neighbours_differ_by_one() -> None:
    for n in (2, 3, 7, 25):
        seq = [pingpong_index(i, n) for i in range(10 * n)]
        assert all(abs(a - b) == 1 for a, b in zip(seq, seq[1:], strict=False))
        assert min(seq) == 0 and max(seq) == n - 1


def test_resampled_range_same_rate_is_identity() -> None:
    assert [list(resampled_range(k, 25, 25)) for k in range(3)] == [[0], [1], [2]]


def test_resampled_range_up_and_down() -> None:
    # 25 -> 50 fps: each source frame twice
    assert [list(resampled_range(k, 25, 50)) for k in range(3)] == [[0, 1], [2, 3], [4, 5]]
    # 50 -> 25 fps: every other source frame
    assert [list(resampled_range(k, 50, 25)) for k in range(4)] == [[0], [], [1], []]
    # 30 -> 25 fps: 5 of every 6 source frames, covering each output index once
    out = [j for k in range(30) for j in resampled_range(k, 30, 25)]
    assert out == list(range(25))


def test_frame_count_covers_the_audio() -> None:
    assert frame_count(2.0, 25) == 50
    assert frame_count(2.01, 25) == 51
    assert frame_count(0.0001, 25) == 1
    assert frame_count(1.5, 30) == 45


def test_output_size_even_and_aspect_kept() -> None:
    assert output_size(320, 240, None) == (320, 240)
    assert output_size(321, 241, None) == (320, 240)
    assert output_size(1920, 1080, 720) == (1280, 720)
    assert output_size(320, 240, 120) == (160, 120)
    assert output_size(1080, 1920, 721) == (404, 720)  # 405 is odd: the nearest even
    assert output_size(1280, 960, 500) == (666, 500)


def test_resample_follows_timestamps_not_frame_numbers() -> None:
    from dropbox_daemon.render.media.frames import resample

    # a phone's variable rate: 25 fps for a second, then 50 fps; the output is 25 fps
    times = [k / 25 for k in range(25)] + [1 + k / 50 for k in range(50)]
    out = [(item, n) for item, n in resample(iter(zip(times, range(75), strict=True)), 25, 25)]
    shown = [item for item, n in out for _ in range(n)]
    assert len(shown) == 50  # two seconds at 25 fps, not 75 frames' worth
    assert shown[:25] == list(range(25)) and shown[25:] == list(range(25, 75, 2))


def test_resample_of_a_constant_rate_matches_resampled_range() -> None:
    from dropbox_daemon.render.media.frames import resample

    for src, out in (
        (25, 25),
        (30, 25),
        (24000 / 1001, 25),
        (60000 / 1001, 30000 / 1001),
        (10, 25),
    ):
        times = [k / src for k in range(90)]
        got = [n for _, n in resample(iter(zip(times, range(90), strict=True)), out, src)]
        want = [len(resampled_range(k, src, out)) for k in range(90)]
        assert got == [n for n in want if n], (src, out)


def test_view_turns_a_stored_picture_as_a_player_does() -> None:
    import av
    import numpy as np

    from dropbox_daemon.render.media.frames import View, to_bgr

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :, 2] = 255  # red along the stored top edge
    frame = av.VideoFrame.from_ndarray(stored, format="bgr24")
    shown = to_bgr(frame, (40, 60), View(rotation=90))  # a phone's portrait: turned clockwise
    assert shown.shape == (60, 40, 3)
    assert shown[:, -10:, 2].mean() == 255 and shown[:, :-10, 2].max() == 0  # top edge -> right
    upside = to_bgr(frame, (60, 40), View(rotation=180))
    assert upside[-10:, :, 2].mean() == 255


def test_transparency_is_flattened_onto_the_background() -> None:
    import numpy as np

    from dropbox_daemon.render.media.frame_math import parse_colour
    from dropbox_daemon.render.media.frames import flatten

    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[0, 0] = (10, 20, 30, 255)
    bgra[1, 1] = (200, 200, 200, 128)
    out = flatten(bgra, parse_colour("#00ff00"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (0, 255, 0)
    assert tuple(out[1, 1]) == (100, 227, 100)
