from __future__ import annotations

import threading
import time

from lifelong.timing import CLOCK, Mark, PartClock, part, since


def test_nested_parts_are_counted_once_under_their_paths() -> None:
    clock = PartClock()
    with clock.part("step"):
        time.sleep(0.02)
        with clock.part("sample"):
            time.sleep(0.03)
        with clock.part("learn"), clock.part("anchor"):
            time.sleep(0.01)
    seconds = clock.seconds()
    assert set(seconds) == {"step", "step/sample", "step/learn", "step/learn/anchor"}
    assert 0.02 <= seconds["step"] < 0.03  # its own time, without the inner parts
    assert seconds["step/sample"] >= 0.03 and seconds["step/learn/anchor"] >= 0.01
    assert seconds["step/learn"] < 0.005


def test_a_part_that_raises_is_still_counted() -> None:
    clock = PartClock()
    try:
        with clock.part("bad"):
            raise ValueError
    except ValueError:
        pass
    with clock.part("next"):
        pass
    assert set(clock.seconds()) == {"bad", "next"}  # the failed part did not stay open


def test_threads_nest_their_own_parts() -> None:
    clock = PartClock()

    def work() -> None:
        with clock.part("answer"):
            time.sleep(0.02)

    with clock.part("learn"):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert set(clock.seconds()) == {"learn", "answer"}
    assert clock.seconds()["learn"] >= 0.015  # the other thread's part is not subtracted from it


def test_since_and_a_mark_give_the_seconds_between_two_readings() -> None:
    before, mark = CLOCK.seconds(), Mark.now()
    with part("timing-test"):
        time.sleep(0.01)
    assert since(before)["timing-test"] >= 0.01
    assert mark.parts()["timing-test"] >= 0.01 and mark.seconds() >= 0.01
    assert "timing-test" not in since(CLOCK.seconds()) and "timing-test" not in Mark.now().parts()
