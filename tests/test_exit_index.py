from webapp.engine.stop_index import StopIndex


def test_breach_is_stop_at_or_above_the_price_and_fires_once():
    index = StopIndex()
    index.add("NSE:INFY", 1, 1500.0)
    index.add("NSE:INFY", 2, 1490.0)
    index.add("NSE:INFY", 3, 1510.5)
    index.add("NSE:TCS", 4, 4000.0)
    assert index.pop_breached("NSE:INFY", 1520.0) == []
    assert index.pop_breached("NSE:INFY", 1510.5) == [(1510.5, 3)]  # equal to the stop is a breach
    assert index.pop_breached("NSE:INFY", 1495.0) == [(1500.0, 1)]
    assert index.pop_breached("NSE:INFY", 1495.0) == []  # already fired
    assert index.pop_breached("NSE:RELIANCE", 1.0) == []
    assert index.pop_breached("NSE:INFY", 1.0) == [(1490.0, 2)]
    assert len(index) == 1


def test_readding_moves_a_strategy_and_remove_forgets_it():
    index = StopIndex()
    index.add("NSE:INFY", 1, 1500.0)
    index.add("NSE:INFY", 1, 1400.0)
    assert len(index) == 1 and index.pop_breached("NSE:INFY", 1450.0) == []
    index.remove("NSE:INFY", 1)
    assert index.pop_breached("NSE:INFY", 1.0) == []
