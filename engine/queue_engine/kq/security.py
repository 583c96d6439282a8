"""TLS and SASL settings shared by the pusher, the consumer and the admin helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

from queue_engine.errors import ConfigError

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How to authenticate to the brokers and whether to encrypt the connection.

    ``password`` is left out of ``repr`` so that logging a config never leaks it.
    """

    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_location: str | None = None  # CA bundle file (PEM); the system's CAs when None

    def __post_init__(self) -> None:
        if self.sasl_mechanism is not None:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"security.sasl_mechanism: {self.sasl_mechanism!r} is not supported; "
                    f"use one of {', '.join(SASL_MECHANISMS)}"
                )
            if not self.username:
                raise ConfigError(f"security.username: SASL {self.sasl_mechanism} needs a username")
            if not self.password:
                raise ConfigError(f"security.password: SASL {self.sasl_mechanism} needs a password")
        elif self.username or self.password:
            raise ConfigError(
                "security.sasl_mechanism: a username or password is set but no mechanism; "
                f"set one of {', '.join(SASL_MECHANISMS)}"
            )
        if self.ca_location is not None and not self.tls:
            raise ConfigError("security.ca_location: a CA bundle is set but tls is false; set tls=True")

    @property
    def protocol(self) -> str:
        if self.sasl_mechanism:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    def librdkafka_config(self) -> dict[str, str]:
        """The librdkafka properties for these settings (contains the password: do not log)."""
        config = {"security.protocol": self.protocol}
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.username or ""
            config["sasl.password"] = self.password or ""
        if self.ca_location:
            config["ssl.ca.location"] = self.ca_location
        return config
