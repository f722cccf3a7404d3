"""Meta-rule expressions: precedence, evaluation and syntax errors with positions."""

import pytest

from filter_server.policy.meta import MetaSyntaxError, parse_meta


@pytest.mark.parametrize("expression,fired,expected", [
    ("A", {"A"}, True),
    ("!A", {"A"}, False),
    ("A && B", {"A"}, False),
    ("A || B", {"B"}, True),
    ("A || B && C", {"A"}, True),          # && binds tighter than ||
    ("(A || B) && C", {"A"}, False),
    ("!(A && B) && C", {"A", "C"}, True),
    ("!!A", {"A"}, True),
    ("  A&&B  ", {"A", "B"}, True),
])
def test_evaluation(expression, fired, expected):
    assert parse_meta(expression).evaluate(fired) is expected


def test_names():
    assert parse_meta("A && !(B || C_2)").names() == {"A", "B", "C_2"}


@pytest.mark.parametrize("expression,message", [
    ("", "empty expression at character 1"),
    ("A &&", "expected a rule name, found 'end of expression' at character 5"),
    ("A B", "unexpected 'B' at character 3"),
    ("(A", "expected ')', found 'end of expression' at character 3"),
    ("A & B", "unexpected character '&' at character 3"),
    ("A + 1", "unexpected character '+' at character 3"),
])
def test_syntax_errors(expression, message):
    with pytest.raises(MetaSyntaxError) as info:
        parse_meta(expression)
    assert str(info.value) == message
