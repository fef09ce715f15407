"""Outgoing mail through SMTP (aiosmtplib), or to the log when no server is set."""

from __future__ import annotations

import logging
from email.message import EmailMessage

import aiosmtplib

from homeserver.config import MailConfig
from homeserver.errors import MatrixError

log = logging.getLogger("whispr.mail")


class Mailer:
    def __init__(self, config: MailConfig) -> None:
        self._config = config

    async def send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self._config.from_address
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content(body)
        if not self._config.smtp_host:
            log.info("mail (no smtp_host configured) to=%s subject=%s\n%s", to, subject, body)
            return
        c = self._config
        try:
            await aiosmtplib.send(
                msg, hostname=c.smtp_host, port=c.smtp_port, username=c.username or None,
                password=c.password or None, start_tls=c.starttls, use_tls=c.use_tls, timeout=c.timeout_s)
        except (aiosmtplib.SMTPException, OSError) as e:
            log.error("sending mail to %s failed: %s", to, e)
            raise MatrixError(500, "M_UNKNOWN", "Could not send the email, try again later") from None
