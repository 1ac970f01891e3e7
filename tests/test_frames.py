from __future__ import annotations

from dropbox_daemon.media.frames import frame_count, output_size, pingpong_index, resampled_range


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
