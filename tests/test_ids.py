from __future__ import annotations

import re

from omniflash.ids import hash_key, new_api_key, new_task_id


def test_task_ids_are_ulids_that_sort_by_creation() -> None:
    ids = [new_task_id() for _ in range(2000)]
    assert all(re.fullmatch(r"task_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_keys_are_random_and_hashes_stable() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("of_") and len(a) > 40
    assert hash_key(a) == hash_key(a) != hash_key(b)
