"""Serial ports of the hardware path: the bridge's end, and the rig end an emulator holds.

:func:`open_rig_port` is how the serial bridge opens a rig; :class:`PtyPort` and
:class:`SerialPort` are the rig's end for the emulator (and for tests that play the rig);
:func:`make_link` gives a port a stable name, as ``/dev/serial/by-id/...`` gives a rig.
"""

from __future__ import annotations

import os
import tty

__all__ = ['PtyPort', 'SerialPort', 'make_link', 'open_rig_port', 'remove_link']


def open_rig_port(path: str, baud: int):
    """The bridge's end of a rig's port (pyserial), exclusive, with stale input dropped.

    Reads wait at most 50 ms, so the reader thread sees a stop request soon; a write that
    cannot go out within 100 ms fails (a wedged USB device) instead of blocking.
    """
    import serial

    port = serial.Serial(path, baud, timeout=0.05, write_timeout=0.1, exclusive=True)
    port.reset_input_buffer()  # stale bytes from before we listened
    return port


class PtyPort:
    """A pseudo-terminal: the emulator holds the master, the host opens ``path``.

    The slave end is put in raw mode at once (no echo, no newline translation) and kept
    open, so bytes written before the host opens it are neither mangled nor echoed.
    """

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)

    def fileno(self) -> int:
        return self._master

    def read(self) -> bytes:
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b''

    def write(self, data: bytes) -> bool:
        """Write a whole frame or nothing (a full buffer drops it, like an overrun UART)."""
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            return False
        return written == len(data)

    def close(self) -> None:
        for fd in (self._slave, self._master):
            try:
                os.close(fd)
            except OSError:
                pass


class SerialPort:
    """A real serial device (e.g. one end of a null-modem cable or of ``socat``)."""

    def __init__(self, path: str, baud: int) -> None:
        import serial

        self.path = path
        self._serial = serial.Serial(path, baud, timeout=0, write_timeout=0.1)

    def fileno(self) -> int:
        return self._serial.fileno()

    def read(self) -> bytes:
        return self._serial.read(self._serial.in_waiting or 1)

    def write(self, data: bytes) -> bool:
        import serial

        try:
            return self._serial.write(data) == len(data)
        except serial.SerialTimeoutException:
            return False

    def close(self) -> None:
        self._serial.close()


def make_link(link: str, target: str) -> None:
    """Point ``link`` at ``target`` atomically (a reader never sees it missing)."""
    temporary = f'{link}.{os.getpid()}.tmp'
    os.symlink(target, temporary)
    os.replace(temporary, link)


def remove_link(link: str, target: str) -> None:
    """Remove ``link`` if it still points at our port (a freed pty path gets reused)."""
    try:
        if os.readlink(link) == target:
            os.unlink(link)
    except OSError:
        pass
