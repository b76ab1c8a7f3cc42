"""A sync response body recorded on its way out: shared by the WSGI and Django adapters."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

from idempo._sync.http import Recorder

__all__ = ["RecordingIterable"]


class RecordingIterable:
    """A response body on its way to the server, recorded chunk by chunk and kept
    (:meth:`Recorder.finish`) when it runs to its end, before the server finishes the response.

    Chunks are handed on at once (a server-sent event or a token stream is never held back).
    A body that stops short is abandoned: ``client_gone`` when the server closed it early (the
    client went away after the handler answered: the key keeps a not-stored marker, so a retry
    is refused rather than run twice), not when the body itself raised (the handler failed:
    the key is freed and a retry runs). ``close()`` closes the wrapped iterable (PEP 3333) and
    is safe to call twice.
    """

    def __init__(self, body: Iterable[bytes], recorder: Recorder) -> None:
        self._body = body
        self._recorder = recorder
        self._closed = False
        self._chunks = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def _run(self) -> Generator[bytes, None, None]:
        try:
            for chunk in self._body:
                self._recorder.add(chunk)
                yield chunk
        except GeneratorExit:
            # The server stopped asking: the client is gone.
            self._recorder.abandon(client_gone=True)
            raise
        except BaseException:
            self._recorder.abandon(client_gone=False)
            raise
        self._recorder.finish()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._chunks.close()  # a generator paused at a yield: abandoned unless settled
        finally:
            try:
                close = getattr(self._body, "close", None)
                if close is not None:
                    close()
            finally:
                # Closed before the end (or never iterated): the server gave up on it.
                self._recorder.abandon(client_gone=True)
