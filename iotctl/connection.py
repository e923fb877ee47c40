"""What a source (receive.Receiver) and a sink (send.Sender) share: a context manager
whose entering connects (`open()`) and whose leaving closes (`close()`)."""

from __future__ import annotations


class Connection:
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass
