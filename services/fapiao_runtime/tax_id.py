"""Unified social credit code (统一社会信用代码) validation per GB 32100-2015.

Layout of the 18 characters:
  1      registration authority code (1-9, A, N, Y)
  2      organisation type code (1-9)
  3-8    administrative division code of the registering authority (6 digits, GB/T 2260)
  9-17   organisation code (GB 11714 body, 9 characters)
  18     check character over positions 1-17

Alphabet: the digits and the upper-case letters without I, O, S, V, Z (31 symbols, valued 0..30).
Check character: weights w_i = 3^(i-1) mod 31; C18 = 31 - (sum(v_i * w_i) mod 31), where 31 maps to 0.
"""

from __future__ import annotations

from fapiao_runtime.errors import InvalidArgument

USCC_LENGTH = 18
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUE_OF = {char: value for value, char in enumerate(USCC_ALPHABET)}
_WEIGHTS = tuple(pow(3, i, 31) for i in range(USCC_LENGTH - 1))
_REGISTRATION_AUTHORITIES = frozenset("123456789ANY")
_ORGANISATION_TYPES = frozenset("123456789")


def uscc_check_char(first17: str) -> str:
    """Return the GB 32100-2015 check character for the first 17 characters of a code.

    Raises InvalidArgument("INVALID_TAX_ID") if `first17` is not 17 characters of the code alphabet.
    """
    if len(first17) != USCC_LENGTH - 1 or any(char not in _VALUE_OF for char in first17):
        raise InvalidArgument("INVALID_TAX_ID", "expected 17 characters of the credit-code alphabet")
    total = sum(_VALUE_OF[char] * weight for char, weight in zip(first17, _WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def validate_uscc(code: str) -> str:
    """Validate an 18-character unified social credit code and return it normalised (stripped, upper case).

    Raises InvalidArgument with reason INVALID_TAX_ID and a message naming the first defect found:
    wrong length, a character outside the alphabet, an unknown registration authority or organisation
    type, a non-numeric region code, or a wrong check character.
    """
    if not isinstance(code, str):
        raise InvalidArgument("INVALID_TAX_ID", "tax id must be a string")
    normalised = code.strip().upper()
    if len(normalised) != USCC_LENGTH:
        raise InvalidArgument("INVALID_TAX_ID", f"tax id must have {USCC_LENGTH} characters")
    for position, char in enumerate(normalised, start=1):
        if char not in _VALUE_OF:
            raise InvalidArgument("INVALID_TAX_ID", f"character {position} is not allowed in a tax id")
    if normalised[0] not in _REGISTRATION_AUTHORITIES:
        raise InvalidArgument("INVALID_TAX_ID", "unknown registration authority code (character 1)")
    if normalised[1] not in _ORGANISATION_TYPES:
        raise InvalidArgument("INVALID_TAX_ID", "unknown organisation type code (character 2)")
    if not normalised[2:8].isdigit():
        raise InvalidArgument("INVALID_TAX_ID", "region code (characters 3-8) must be digits")
    if uscc_check_char(normalised[:17]) != normalised[17]:
        raise InvalidArgument("INVALID_TAX_ID", "check character does not match (GB 32100-2015)")
    return normalised


def is_valid_uscc(code: str) -> bool:
    """True when `code` passes validate_uscc."""
    try:
        validate_uscc(code)
    except InvalidArgument:
        return False
    return True
