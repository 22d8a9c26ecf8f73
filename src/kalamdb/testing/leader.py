"""Which node leads, decided from every node's health answer -- or why no node safely does."""

from __future__ import annotations


def agreed_leader(healths: dict[int, dict | Exception]) -> tuple[int | None, str]:
    """The leader's node id, or None and the reason.

    A leader is returned only when exactly one node of its configuration claims leadership, every
    answering member names it, no answering member is in a newer term, and the members that confirm
    it are a majority of its voters: a stale leader cut off from the others (or one of two
    claimants in different terms) is never returned. Nodes outside the configuration have no say:
    a node started but not joined yet (no configuration, no leader), or one the claimant's
    configuration no longer has (removed while it still runs)."""
    answers = {nid: h for nid, h in healths.items() if isinstance(h, dict)
               and (h.get("voters") or h.get("learners") or h.get("leader_id") is not None or h.get("is_leader"))}
    silent = sorted(nid for nid, h in healths.items() if not isinstance(h, dict))
    if not answers:
        return None, f"no node answers (silent: {silent})"
    claimants = sorted((nid for nid, h in answers.items() if h.get("is_leader")),
                       key=lambda nid: -int(answers[nid].get("current_term") or 0))
    if not claimants:
        return _judge(answers, silent)
    found, reasons = [], []
    for cand in claimants:  # each claimant judged among the members of its own configuration
        h = answers[cand]
        config = {cand, *(h.get("voters") or []), *(h.get("learners") or [])}
        lid, why = _judge({nid: a for nid, a in answers.items() if nid in config}, silent)
        if lid is not None:
            found.append(lid)
        else:
            reasons.append(why)
    if len(found) == 1:
        return found[0], ""
    if found:
        return None, f"nodes {sorted(found)} are each confirmed leader by their own configuration"
    return None, reasons[0]


def _judge(answers: dict[int, dict], silent: list[int]) -> tuple[int | None, str]:
    claimants = {nid: h.get("current_term") for nid, h in answers.items() if h.get("is_leader")}
    if len(claimants) > 1:
        return None, f"{len(claimants)} nodes claim leadership: " + ", ".join(
            f"node {nid} in term {term}" for nid, term in sorted(claimants.items()))
    views = {nid: h.get("leader_id") for nid, h in answers.items()}
    if len(set(views.values())) != 1:
        return None, f"nodes disagree on the leader (node: leader it names): {views}"
    lid = next(iter(views.values()))
    if lid is None:
        return None, f"no node knows a leader (answering: {sorted(answers)}, silent: {silent})"
    if lid not in answers:
        return None, f"node {lid} is named leader but does not answer (silent: {silent})"
    if lid not in claimants:
        return None, f"node {lid} is named leader but does not say it leads"
    term = int(answers[lid].get("current_term") or 0)
    newer = {nid: h.get("current_term") for nid, h in answers.items() if int(h.get("current_term") or 0) > term}
    if newer:
        return None, f"node {lid} leads term {term} but nodes are in newer terms: {newer}"
    voters = list(answers[lid].get("voters") or [])
    confirming = sorted(nid for nid in answers if nid in voters)
    if voters and len(confirming) * 2 <= len(voters):
        return None, (f"only nodes {confirming} confirm node {lid} as leader (term {term}); a majority of "
                      f"voters {voters} must (silent: {silent})")
    return lid, ""
