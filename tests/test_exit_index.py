from webapp.engine.exit_index import FALL, RISE, STOP, TARGET, TRAIL, ExitIndex


def test_a_falling_level_fires_at_or_below_it_once():
    index = ExitIndex()
    index.set("NSE:INFY", 1, STOP, FALL, 1500.0)
    index.set("NSE:INFY", 2, STOP, FALL, 1490.0)
    index.set("NSE:INFY", 3, STOP, FALL, 1510.5)
    index.set("NSE:TCS", 4, STOP, FALL, 4000.0)
    assert index.pop_crossed("NSE:INFY", 1520.0) == []
    assert index.pop_crossed("NSE:INFY", 1510.5) == [(3, STOP, 1510.5)]  # equal to the stop is a breach
    assert index.pop_crossed("NSE:INFY", 1495.0) == [(1, STOP, 1500.0)]
    assert index.pop_crossed("NSE:INFY", 1495.0) == []  # already fired
    assert index.pop_crossed("NSE:RELIANCE", 1.0) == []
    assert index.pop_crossed("NSE:INFY", 1.0) == [(2, STOP, 1490.0)]
    assert len(index) == 1


def test_a_rising_level_fires_at_or_above_it_and_both_sides_are_watched():
    index = ExitIndex()
    index.set("NSE:INFY", 1, STOP, FALL, 1480.0)  # a long: stop below, target and next trail move above
    index.set("NSE:INFY", 1, TARGET, RISE, 1600.0)
    index.set("NSE:INFY", 1, TRAIL, RISE, 1530.0)
    index.set("NSE:INFY", 2, STOP, RISE, 1560.0)  # a short: stop above, target below
    index.set("NSE:INFY", 2, TARGET, FALL, 1450.0)
    assert index.pop_crossed("NSE:INFY", 1500.0) == []
    assert index.pop_crossed("NSE:INFY", 1530.0) == [(1, TRAIL, 1530.0)]
    assert index.levels(1) == {STOP: 1480.0, TARGET: 1600.0}
    assert sorted(index.pop_crossed("NSE:INFY", 1600.0)) == [(1, TARGET, 1600.0), (2, STOP, 1560.0)]
    assert sorted(index.pop_crossed("NSE:INFY", 1440.0)) == [(1, STOP, 1480.0), (2, TARGET, 1450.0)]
    assert len(index) == 0 and index._lists == {}


def test_moving_an_entry_replaces_it_and_remove_forgets_every_entry():
    index = ExitIndex()
    index.set("NSE:INFY", 1, STOP, FALL, 1500.0)
    index.set("NSE:INFY", 1, STOP, FALL, 1400.0)
    index.set("NSE:INFY", 1, TARGET, RISE, 1600.0)
    index.set("NSE:INFY", 2, STOP, FALL, 1450.0)
    assert len(index) == 2 and index.pop_crossed("NSE:INFY", 1460.0) == []
    index.remove(1)
    assert 1 not in index and index.pop_crossed("NSE:INFY", 1700.0) == []
    assert index.pop_crossed("NSE:INFY", 1.0) == [(2, STOP, 1450.0)]
    index.set("NSE:INFY", 3, STOP, FALL, 1450.0)
    index.set("NSE:TCS", 3, STOP, FALL, 3000.0)  # another instrument: moved there
    assert index.pop_crossed("NSE:INFY", 1.0) == [] and index.pop_crossed("NSE:TCS", 2999.0) == [(3, STOP, 3000.0)]
    index.set("NSE:TCS", 4, TRAIL, RISE, 3100.0)
    index.discard(4, TRAIL)
    assert len(index) == 0 and index._lists == {}
