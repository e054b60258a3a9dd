"""The byte-bounded store of saved sequence states both single-sequence backends use (no model needed)."""

from __future__ import annotations

from pensieve_server.engine.saved_states import SavedStates, common_prefix


def tokens_of(store: SavedStates) -> list[list[int]]:
    return [item.tokens.tolist() for item in store.items]


def test_common_prefix_of_lists_and_arrays() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2 and common_prefix([], [1]) == 0 and common_prefix([5], [6]) == 0


def test_keeps_the_most_recent_within_its_bytes() -> None:
    store: SavedStates[str] = SavedStates(100)
    store.add([1, 2, 3], "a", 40)
    store.add([1, 2, 3, 4], "b", 40)  # supersedes the state it extends
    assert tokens_of(store) == [[1, 2, 3, 4]] and store.bytes == 40
    store.add([5, 6], "c", 40)
    assert store.best([1, 2, 9]) == (0, 2) and store.best([7]) == (-1, 0)
    assert store.take(0).payload == "b"  # [1, 2, 3, 4] is now the most recently used
    store.add([7, 8], "d", 40)  # over 100 bytes: the least recently used one goes
    assert tokens_of(store) == [[1, 2, 3, 4], [7, 8]] and store.bytes == 80
    assert store.covers([1, 2, 3]) and not store.covers([1, 2, 3, 4, 5])
    store.add([9], "e", 101)  # larger than the whole budget: not kept
    assert store.bytes == 80 and len(store.items) == 2
    store.clear()
    assert store.items == [] and store.bytes == 0


def test_a_shared_prefix_survives_while_any_holder_is_kept() -> None:
    system_and_tools = list(range(1000))
    store: SavedStates[str] = SavedStates(100)
    store.add(system_and_tools + [1, 1], "main conversation", 50)
    store.add(system_and_tools + [2, 2], "side task", 50)
    store.add(system_and_tools + [3, 3], "subagent", 50)  # evicts the main conversation
    index, shared = store.best(system_and_tools + [9])
    assert index >= 0 and shared == len(system_and_tools)


def test_states_a_later_prompt_continued_outlive_one_off_ones() -> None:
    """Claude Code's main conversation (continued every turn) stays while one-off side tasks come and go."""
    system_and_tools = list(range(1000))
    store: SavedStates[str] = SavedStates(100)
    store.add(system_and_tools + [1], "main, turn 1", 40)
    index, _ = store.best(system_and_tools + [1, 2])
    store.take(index)  # turn 2 started from it
    store.add(system_and_tools + [1, 2], "main, turn 2", 40)  # supersedes turn 1 and inherits its reuse
    store.add([7, 7, 7], "title generation", 40)  # over budget: the oldest never-reused state goes (itself last)
    assert tokens_of(store) == [system_and_tools + [1, 2], [7, 7, 7]]
    store.add([8, 8, 8], "side task", 40)  # the older one-off goes, not the main conversation
    assert tokens_of(store) == [system_and_tools + [1, 2], [8, 8, 8]]
    assert store.items[0].reused == 1 and store.bytes == 80
