"""Round-record bookkeeping that needs no MPI (negotiation.Layout)."""

from bluefog.engine import negotiation


class _Request:
    freed = False

    def Free(self):
        self.freed = True


class _Comm:
    def Send_init(self, buffer, dest, tag):
        return _Request()


def test_persistent_sends_in_use_are_never_the_ones_freed():
    """A lone neighbor round starts two groups of persistent sends; taking the second must not
    free the first, even when the first was made long ago (least recently *used* goes first)."""
    layout, comm = negotiation.Layout(4, 0), _Comm()
    first = layout.sends(comm, 100, (1, 2))
    for k in range(negotiation.MAX_PERSISTENT_SENDS - 1):
        layout.sends(comm, 200 + k, (1, 2, 3))
    assert layout.sends(comm, 100, (1, 2)) is first          # kept, and now the most recent
    second = layout.sends(comm, 50, (3,))
    assert not any(request.freed for request in first + second)
    assert len(layout._sends) == negotiation.MAX_PERSISTENT_SENDS
    oldest = layout.sends(comm, 200, (1, 2, 3))               # was freed to make room: made anew
    assert not any(request.freed for request in oldest)


def test_lone_record_is_what_record_makes_for_a_lone_op():
    """Lone rounds compare received records with ``lone_record``: it must be exactly the record
    an ordinary round builds for a single pending op that carries its data."""

    class _Op:
        sends = None
        fusion_key = None
        dim0 = 0

        def digest(self):
            return 12345

    layout = negotiation.Layout(5, 2)
    made = layout.record([_Op()], True, {0: b"", 4: b""}).tolist()
    assert made == layout.lone_record(12345, 0, [0, 4])
