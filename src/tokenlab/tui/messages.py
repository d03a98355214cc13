"""Messages that cross the app: the controller thread's events, carried to the screen."""

from __future__ import annotations

from textual.message import Message

from tokenlab.lab.controller import FrontierView, LabEvent


class LabEventMessage(Message):
    """A LabEvent from the controller thread, posted to the lab screen (post_message is thread-safe)."""

    def __init__(self, event: LabEvent) -> None:
        super().__init__()
        self.event = event

    def can_replace(self, message: Message) -> bool:
        # only the newest frontier matters: older ones are stale once a newer one is queued
        return (
            isinstance(message, LabEventMessage)
            and isinstance(self.event, FrontierView)
            and isinstance(message.event, FrontierView)
        )
