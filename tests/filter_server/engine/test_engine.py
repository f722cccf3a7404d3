"""The compiled policy: each rule target, lists, signatures, meta rules, thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from filter_server.bayes.model import BayesModel
from filter_server.bayes.tokenize import tokenize
from filter_server.engine.compiled import CompiledPolicy, Envelope, message_digest
from filter_server.message import parse_message
from filter_server.policy.loader import load_policy_dir


def compile_policy(tmp_path: Path, policy: dict, model: BayesModel | None = None):
    if model is not None:
        (tmp_path / "model.json.gz").write_bytes(model.to_bytes())
        policy = {**policy, "model": {"file": "model.json.gz", "weight": 6}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    return CompiledPolicy(load_policy_dir(tmp_path))


def msg(subject="Hello", body="Just a note.", headers="", ctype="text/plain"):
    return (f"From: Alice <alice@sender.example>\nTo: bob@example.com\nSubject: {subject}\n"
            f"{headers}Content-Type: {ctype}; charset=utf-8\n\n{body}\n").encode()


def hit_names(verdict):
    return [h.name for h in verdict.hits]


def test_each_target_scans_its_own_text(tmp_path):
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "SUBJ", "target": "header", "header": "subject", "pattern": "(?i)^win", "score": 1},
        {"name": "ANYHDR", "target": "header", "header": "ALL", "pattern": "^X-Spam-Tool: ", "score": 1},
        {"name": "BODY", "target": "body", "pattern": r"(?i)click here now", "score": 2},
        {"name": "URI", "target": "uri", "pattern": r"^https?://[^/]*\.ru/", "score": 3},
        {"name": "SENDER", "target": "sender", "pattern": r"@bulk\.example$", "score": 4},
    ]})
    verdict = policy.classify(msg("Win big", "Please\n CLICK   here\nnow: http://x.ru/a",
                                  headers="X-Spam-Tool: yes\n"),
                              Envelope(mail_from="list@bulk.example"))
    assert sorted(hit_names(verdict)) == ["ANYHDR", "BODY", "SENDER", "SUBJ", "URI"]
    assert verdict.score == 11.0 and verdict.action == "QUARANTINE"
    assert verdict.spam_probability == -1.0
    clean = policy.classify(msg("Lunch?", "See you at noon"), Envelope("a@b.example"))
    assert hit_names(clean) == [] and clean.action == "ACCEPT"


def test_header_rules_see_decoded_values_and_body_rules_see_html_text(tmp_path):
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "SUBJ", "target": "header", "header": "Subject", "pattern": "Grüße", "score": 1},
        {"name": "BODY", "target": "body", "pattern": "free money", "score": 1},
        {"name": "SCRIPT", "target": "body", "pattern": "evil", "score": 1},
        {"name": "HREF", "target": "uri", "pattern": "tracker\\.example", "score": 1},
    ]})
    html = ('<html><script>evil()</script><p>free <b>money</b></p>'
            '<a href="http://tracker.example/x">go</a></html>')
    verdict = policy.classify(msg("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", html, ctype="text/html"))
    assert sorted(hit_names(verdict)) == ["BODY", "HREF", "SUBJ"]


def test_base64_and_quoted_printable_bodies_are_decoded(tmp_path):
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "BODY", "target": "body", "pattern": "secret offer", "score": 1}]})
    b64 = ("From: a@b.example\nMIME-Version: 1.0\nContent-Type: text/plain\n"
           "Content-Transfer-Encoding: base64\n\nc2VjcmV0IG9mZmVy\n").encode()
    qp = ("From: a@b.example\nContent-Type: text/plain\nContent-Transfer-Encoding: "
          "quoted-printable\n\nsecret=20of=\nfer\n").encode()
    assert hit_names(policy.classify(b64)) == ["BODY"]
    assert hit_names(policy.classify(qp)) == ["BODY"]


def test_lists_match_addresses_domains_and_parent_domains(tmp_path):
    # matchUnauthenticated: the matching itself is tested here; what authentication
    # proves is matched in tests/filter_server/auth/test_server.py.
    policy = compile_policy(tmp_path, {"lists": {
        "allow": {"senders": ["Boss@Corp.example"], "domains": ["partner.example"],
                  "matchUnauthenticated": True},
        "block": {"uriHosts": ["bad.example"], "score": 50}}})
    v = policy.classify(msg(), Envelope(mail_from="boss@corp.example"))
    assert hit_names(v) == ["ALLOWLIST_SENDER"] and v.score == -100
    v = policy.classify(msg(), Envelope(mail_from="x@mail.partner.example"))
    assert hit_names(v) == ["ALLOWLIST_DOMAIN"]
    v = policy.classify(msg(body="see https://www.bad.example/promo"))
    assert hit_names(v) == ["BLOCKLIST_URI_HOST"] and v.action == "REJECT"
    v = policy.classify(msg(body="see https://notbad.example/promo"))
    assert hit_names(v) == []


def test_allow_lists_need_authentication_unless_a_policy_opts_out(tmp_path):
    lists = {"allow": {"senders": ["boss@corp.example"], "domains": ["partner.example"]}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(Exception, match="match only authenticated senders"):
        compile_policy(tmp_path / "a", {"lists": lists})
    policy = compile_policy(tmp_path / "b", {"lists": lists,
                                             "authentication": {"enabled": True}})
    # Without evidence from authentication nothing is proved: the claims do not match.
    v = policy.classify(msg(), Envelope(mail_from="boss@corp.example"))
    assert not [n for n in hit_names(v) if n.startswith("ALLOWLIST")]


def test_signature_matches_reformatted_copies(tmp_path):
    spam = msg("Deal", "Buy   cheap WATCHES\nnow")
    digest = message_digest(spam)
    policy = compile_policy(tmp_path, {"signatures": {"digests": [digest]}})
    copy = msg("Other subject", "buy cheap watches now")
    assert hit_names(policy.classify(copy)) == ["KNOWN_SPAM_SIGNATURE"]
    assert policy.classify(copy).score == 20.0
    assert hit_names(policy.classify(msg("Deal", "buy cheap clocks now"))) == []


def test_meta_rules_combine_in_dependency_order(tmp_path):
    policy = compile_policy(tmp_path, {
        "rules": [{"name": "A", "target": "body", "pattern": "alpha", "score": 0.5},
                  {"name": "B", "target": "body", "pattern": "beta", "score": 0.5}],
        "metaRules": [
            {"name": "BOTH_NOT_LISTED", "expression": "BOTH && !ALLOWLIST_SENDER", "score": 2},
            {"name": "BOTH", "expression": "A && B", "score": 1},
        ]})
    v = policy.classify(msg(body="alpha beta"))
    assert hit_names(v) == ["A", "B", "BOTH", "BOTH_NOT_LISTED"] and v.score == 4.0
    assert hit_names(policy.classify(msg(body="alpha"))) == ["A"]


@pytest.mark.parametrize("score,action", [(4.99, "ACCEPT"), (5, "TAG"), (10, "QUARANTINE"),
                                          (20, "REJECT"), (-3, "ACCEPT")])
def test_thresholds_choose_the_action(tmp_path, score, action):
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "X", "target": "body", "pattern": "trigger", "score": score}]})
    assert policy.classify(msg(body="trigger")).action == action


def _trained_model(spam_bodies: list[str], ham_bodies: list[str]) -> BayesModel:
    """A model counted from the tokens the filter itself extracts, so the fixture follows
    the tokenizer (look-alike folding, minimum counts) instead of guessing its tokens."""
    counts: dict[str, list[int]] = {}
    for column, bodies in ((0, spam_bodies), (1, ham_bodies)):
        for body in bodies:
            for token in tokenize(parse_message(msg(body=body))):
                counts.setdefault(token, [0, 0])[column] += 1
    return BayesModel(nspam=len(spam_bodies), nham=len(ham_bodies),
                      counts={t: (s, h) for t, (s, h) in counts.items()})


def test_model_contributes_weighted_score(tmp_path):
    # ten spam and ten ham, each class with its own words, seen well above the model's
    # minimum count; the shared headers are neutral
    model = _trained_model([f"lottery winnings claim {n}" for n in range(10)],
                           [f"meeting agenda minutes {n}" for n in range(10)])
    policy = compile_policy(tmp_path, {}, model)
    spam = policy.classify(msg(body="lottery winnings"))
    ham = policy.classify(msg(body="meeting agenda"))
    assert spam.spam_probability > 0.9 and ham.spam_probability < 0.1
    bayes = {h.name: h.score for h in spam.hits}["BAYES"]
    assert bayes == pytest.approx(6 * (2 * spam.spam_probability - 1), abs=1e-3)
    ham_bayes = {h.name: h.score for h in ham.hits}["BAYES"]
    assert ham_bayes == pytest.approx(6 * (2 * ham.spam_probability - 1), abs=1e-3)
    assert spam.action == "TAG" and ham.action == "ACCEPT"


def test_policy_hash_changes_with_policy_and_model(tmp_path):
    a = compile_policy(tmp_path / "a", {}) if (tmp_path / "a").mkdir() is None else None
    b = compile_policy(tmp_path / "b", {"thresholds": {"tag": 4}}) \
        if (tmp_path / "b").mkdir() is None else None
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    c = compile_policy(c_dir, {}, BayesModel(1, 1, {"x": (1, 0)}))
    assert len({a.hash, b.hash, c.hash}) == 3
    (tmp_path / "a2").mkdir()
    assert compile_policy(tmp_path / "a2", {}).hash == a.hash  # content, not location


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage without headers",
    b"Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nhi\n",
    b"Content-Type: multipart/mixed\n\nno boundary at all",
    b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n!!!not base64@@@",
    b"Content-Type: text/plain; charset=no-such-charset\n\n\xe9t\xe9",
    b"Subject: =?bogus?Q?=ZZ?=\n\nbody",
    b"Subject: " + b"A" * 100000 + b"\n\nbody",
    b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
             for i in range(3000)),
])
def test_malformed_mime_never_raises(tmp_path, raw):
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "X", "target": "body", "pattern": "hi", "score": 1}]})
    verdict = policy.classify(raw)
    assert verdict.action in ("ACCEPT", "TAG", "QUARANTINE", "REJECT")


def test_deeply_nested_multipart_falls_back_to_raw_text(tmp_path):
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "X", "target": "body", "pattern": "deep text", "score": 1}]})

    def nested(depth: int) -> bytes:
        return ("".join(f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
                        for i in range(depth)) + "Content-Type: text/plain\n\ndeep text\n").encode()

    # reasonable nesting parses normally
    assert hit_names(policy.classify(nested(20))) == ["X"]
    # nesting beyond the parser's recursion limit: the raw text is still scanned, and the
    # verdict says the structure was broken
    assert hit_names(policy.classify(nested(2000))) == ["X", "MIME_MALFORMED"]


def test_scan_size_limit_bounds_body_text(tmp_path):
    policy = compile_policy(tmp_path, {"limits": {"maxScanBytes": 2048}, "rules": [
        {"name": "TAIL", "target": "body", "pattern": "needle", "score": 1}]})
    assert hit_names(policy.classify(msg(body="x " * 2000 + "needle"))) == []
    assert hit_names(policy.classify(msg(body="needle " + "x " * 2000))) == ["TAIL"]


def test_pathological_pattern_stays_linear(tmp_path):
    """A classic catastrophic-backtracking pattern must not blow up (automaton engine)."""
    import time
    policy = compile_policy(tmp_path, {"rules": [
        {"name": "REDOS", "target": "body", "pattern": "(a+)+b", "score": 1}]})
    body = "a" * 200000 + "!"  # never matches: backtracking explodes
    started = time.process_time()
    policy.classify(msg(body=body))
    # backtracking engines need astronomically long here; an automaton takes milliseconds
    assert time.process_time() - started < 2.0
