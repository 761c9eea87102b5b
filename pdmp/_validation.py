"""Input checks shared by the core and the adapters.

Every check raises with a message that names the offending value and says how to fix it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def check_modality_names(names: Iterable[Any], *, where: str = "modalities") -> tuple[str, ...]:
    """Return ``names`` as a tuple after checking there are >= 2, all non-empty, no duplicates.

    A plain string is refused: iterating ``"av"`` would silently give the modalities ``('a', 'v')``.
    """
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"{where}: got the single string {names!r}; pass a list of modality names such as ['audio', 'visual']"
        )
    try:
        result = tuple(names)
    except TypeError:
        raise TypeError(f"{where}: expected a list of modality names, got {type(names).__name__} {names!r}") from None
    for name in result:
        if not isinstance(name, str):
            raise TypeError(f"{where}: modality name {name!r} is a {type(name).__name__}; use strings such as 'audio'")
        if not name.strip():
            raise ValueError(f"{where}: empty modality name {name!r}; give every modality a non-empty name")
    duplicates = sorted(name for name, count in Counter(result).items() if count > 1)
    if duplicates:
        raise ValueError(f"{where}: duplicate modality name(s) {duplicates}; every modality needs a distinct name")
    if len(result) < 2:
        raise ValueError(
            f"{where}: got {len(result)} modality ({list(result)}); PDMP needs at least two modalities to rank"
        )
    return result


def check_known_modality(name: str, known: Sequence[str], *, where: str) -> str:
    if name not in known:
        raise ValueError(f"{where}: unknown modality {name!r}; known: {', '.join(known)}")
    return name


def check_same_modalities(given: Iterable[str], expected: Sequence[str], *, where: str) -> None:
    """Raise if ``given`` is not exactly the set ``expected`` (order does not matter)."""
    given_set, expected_set = set(given), set(expected)
    if given_set == expected_set:
        return
    unknown = sorted(given_set - expected_set)
    missing = sorted(expected_set - given_set)
    parts = []
    if unknown:
        parts.append(f"unknown modality(ies) {unknown}")
    if missing:
        parts.append(f"missing modality(ies) {missing}")
    raise ValueError(
        f"{where}: {' and '.join(parts)}; expected exactly {sorted(expected_set)} "
        "(the policy's / ranking's modality names)"
    )


def check_number(value: Any, *, name: str) -> float:
    """``value`` as a float; only real numbers (Python or NumPy) are accepted.

    Strings (``"10"`` from a hand-edited config) and booleans are refused: ``float("10")`` and
    ``float(True)`` would otherwise turn a typo into a silent number.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_short(value)}")
    try:
        return float(value)
    except OverflowError:  # a Python int beyond float range (e.g. 10**400 in a hand-edited file)
        raise ValueError(
            f"{name} must be a number within float range (about 1.8e308), got an integer of about "
            f"{int(int(value).bit_length() * math.log10(2)) + 1} digits"
        ) from None


def check_positive_finite(value: Any, *, name: str) -> float:
    number = check_number(value, name=name)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_non_negative_finite(value: Any, *, name: str) -> float:
    number = check_number(value, name=name)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_non_negative_int(value: Any, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {_short(value)}")
    return int(value)


def check_positive_int(value: Any, *, name: str) -> int:
    number = check_non_negative_int(value, name=name)
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return number


def check_bool(value: Any, *, name: str) -> bool:
    """``value`` if it is a real boolean (Python or NumPy).

    Strings and numbers are refused: ``bool("false")`` is True, so a config saying ``"no"`` would
    silently mean yes.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_seed(value: Any, *, name: str = "seed") -> int:
    """A seed as a plain ``int`` >= 0 (NumPy integers are converted, so the value stays JSON-serialisable)."""
    return check_non_negative_int(value, name=name)


def check_finite_array(values: ArrayLike, *, name: str) -> NDArray[np.float64]:
    try:
        raw = np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular numeric array ({error})") from None
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {raw.dtype}; pass a numeric array")
    array = raw.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (first at index {first}: {float(array[first])!r}); "
            "remove NaN/inf before ranking or modulating (check for a diverged model)"
        )
    return array


def check_num_classes(value: Any, *, name: str = "num_classes") -> int:
    return check_positive_int(value, name=name)


def check_labels(labels: ArrayLike, *, num_classes: int | None = None, name: str = "labels") -> NDArray[np.int64]:
    """Labels as int64 class indices in ``0..num_classes-1`` (upper bound checked when given).

    Integer-valued floats are accepted; booleans, strings, fractions and NaN are refused.
    """
    try:
        array = np.asarray(labels)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be 1-D class indices ({error})") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    if array.dtype.kind == "f":
        bad = ~(np.isfinite(array) & (array == np.round(array)))
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"{name} must hold integer class indices, got dtype {array.dtype} with {float(array[first])!r} "
                f"at index {first}; pass whole-number class indices"
            )
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} contains negative class index {int(array.min())}; use indices 0..C-1")
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
    if num_classes is not None and array.size and array.max() >= num_classes:
        raise ValueError(
            f"{name} contains class index {int(array.max())} but there are {num_classes} classes "
            f"(valid: 0..{num_classes - 1}); check the label encoding or the number of classes"
        )
    return array


def check_same_length(arrays: Mapping[str, Any], *, where: str) -> int:
    lengths = {key: len(value) for key, value in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{where}: mismatched lengths {lengths}; every array must hold the same samples")
    return next(iter(lengths.values()), 0)


def check_disjoint_assignment(
    groups: Mapping[str, Iterable[Hashable]], *, describe: Any = repr, kind: str = "parameter"
) -> dict[str, list[Hashable]]:
    """Check that no item is claimed by two modalities and that no modality is empty.

    ``groups`` maps a modality to identities (e.g. ``id(param)``); ``describe`` turns an identity into a
    readable name for the error message.
    """
    owner: dict[Hashable, str] = {}
    result: dict[str, list[Hashable]] = {}
    for modality, items in groups.items():
        unique: list[Hashable] = []
        for item in items:
            previous = owner.get(item)
            if previous is not None and previous != modality:
                raise ValueError(
                    f"{kind} {describe(item)} is claimed by modalities {previous!r} and {modality!r}; "
                    "each parameter may belong to one modality only (leave shared fusion/head parameters out)"
                )
            if previous is None:
                owner[item] = modality
                unique.append(item)
        if not unique:
            raise ValueError(
                f"modality {modality!r} has no trainable {kind}s; give it its encoder's {kind}s "
                "(frozen ones do not count)"
            )
        result[modality] = unique
    return result


# ---- containers, saved state, file names ------------------------------------------------------------


def _short(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a 5,000-digit number or a deeply nested list from a
    corrupt file must not flood the message (and ``repr`` of a huge int itself raises)."""
    try:
        text = repr(value)
    except ValueError:  # int beyond sys.get_int_max_str_digits()
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_sequence(value: Any, *, name: str, example: str, allow_empty: bool = False) -> tuple[Any, ...]:
    """``value`` as a tuple when it is a list-like of items (not a string, a mapping or a scalar).

    A scalar where a list is expected (``gamma_p=10.0`` for ``gamma_p=(10.0,)``) and a string (which
    would iterate by character) are refused with the fix; so is an empty list unless ``allow_empty``.
    """
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a list or tuple such as {example}, got {type(value).__name__} {_short(value)}"
            + ("; for a single value write [value]" if not isinstance(value, Mapping) else "")
        )
    result = tuple(value)
    if not result and not allow_empty:
        raise ValueError(f"{name} is empty; give at least one value, e.g. {example}")
    return result


def check_mapping(value: Any, *, name: str, example: str) -> Mapping[Any, Any]:
    """``value`` if it is a dict-like mapping; anything else is refused naming ``name`` and an example."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict such as {example}, got {type(value).__name__} {_short(value)}")
    return value


def check_state_keys(state: Any, *, required: Iterable[str], optional: Iterable[str] = (), where: str) -> None:
    """A saved state (``load_state_dict``) must be a dict with exactly the known keys.

    An unknown key means the state belongs to something else (another policy, another version): loading
    it as if it were this one's would silently drop what it holds.
    """
    required, optional = tuple(required), tuple(optional)
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{where} must be a dict with keys {list(required)} (from state_dict()), got "
            f"{type(state).__name__} {_short(state)}"
        )
    missing = [key for key in required if key not in state]
    unknown = sorted(map(str, set(state) - set(required) - set(optional)))
    if missing or unknown:
        parts = ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {unknown}"] if unknown else [])
        raise ValueError(
            f"{where}: {' and '.join(parts)}; pass the dict state_dict() returned for the same kind of object"
        )


#: Nesting deeper than this in a JSON file is refused (pdmp's own files nest a few levels).
MAX_JSON_DEPTH = 64


def _refuse_json_constant(constant: str) -> Any:
    raise ValueError(f"non-finite number {constant} in the file; every number must be finite")


def _refuse_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"duplicate field(s) {duplicated} in one object; which one is meant is ambiguous")
    return dict(pairs)


def _json_depth(value: Any) -> int:
    """The nesting depth of parsed JSON, iteratively (a recursive walk would itself overflow)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(
    text: str,
    *,
    source: str,
    error: Callable[[str], Exception] = ValueError,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a JSON file's ``text`` strictly; every failure raises ``error(message naming source)``.

    Refused, each with the fix: invalid or truncated JSON, ``NaN``/``Infinity``, a key twice in one
    object, integers beyond Python's digit limit, nesting deeper than ``max_depth`` (which would
    otherwise surface as a raw ``RecursionError``, here or in whatever walks the data later).
    """
    try:
        data = json.loads(text, parse_constant=_refuse_json_constant, object_pairs_hook=_refuse_duplicate_json_keys)
    except json.JSONDecodeError as caught:
        raise error(f"{source} is not valid JSON ({caught}); it may be truncated, re-create it") from None
    except RecursionError:
        raise error(
            f"{source} nests lists/objects too deeply to read (more than {max_depth} levels); it is not a file "
            "pdmp wrote, re-create it"
        ) from None
    except ValueError as caught:  # NaN/Infinity, duplicate keys, integers beyond the digit limit
        if "integer string conversion" in str(caught):
            raise error(
                f"{source} holds an integer of more than {sys.get_int_max_str_digits()} digits; no pdmp file "
                "does, re-create it"
            ) from None
        raise error(f"{source}: {caught}; re-create the file") from None
    depth = _json_depth(data)
    if depth > max_depth:
        raise error(
            f"{source} nests lists/objects {depth} levels deep (at most {max_depth}); it is not a file pdmp "
            "wrote, re-create it"
        )
    return data


_UNSAFE_NAME = re.compile(r"[\\/\x00-\x1f\x7f]")


def check_file_name(value: Any, *, name: str, max_length: int = 120) -> str:
    """A user-given name that becomes (part of) a file name: a non-empty string without path
    separators, control characters, ``.``/``..`` or a leading dot, at most ``max_length`` characters.

    Without this a name such as ``"../x"`` writes outside the folder the user chose, and ``"a/b"`` into
    a sub-folder nobody created.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string (it names a file), got {type(value).__name__} {_short(value)}")
    bad = _UNSAFE_NAME.search(value)
    if not value.strip() or value.startswith(".") or bad is not None or len(value) > max_length:
        reason = (
            "is empty"
            if not value.strip()
            else f"contains {bad.group(0)!r}"
            if bad is not None
            else "starts with '.'"
            if value.startswith(".")
            else f"is longer than {max_length} characters"
        )
        raise ValueError(
            f"{name} {_short(value)} {reason}; it names a file, so use letters, digits and '-_=[],+' "
            "(no '/', '\\', '..' or control characters)"
        )
    return value
