"""What a kernel yields to wait for GPU work instead of MPI requests."""


class DeviceWait:
    """GPU work a kernel waits for: CUDA events and ``torch.distributed`` works, polled (never
    blocked on) by the engine.

    Example::

        done = torch.cuda.Event()
        done.record(stream)
        yield DeviceWait([done])
    """

    __slots__ = ("pending",)

    def __init__(self, items):
        self.pending = list(items)

    def done(self) -> bool:
        self.pending = [item for item in self.pending if not _finished(item)]
        return not self.pending


def _finished(item) -> bool:
    query = getattr(item, "query", None)      # torch.cuda.Event
    return query() if query is not None else item.is_completed()
