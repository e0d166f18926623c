from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ExternalId = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
]
ClientStatus = Literal["ACTIVE", "INACTIVE"]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: ExternalId = Field(
        examples=["CUST-1001"], description="The bank's client identifier"
    )
    name: Name = Field(examples=["Acme Pension Fund"])
    desk: str = Field(examples=["EQ-US"], description="Code of the desk that covers the client")
    status: ClientStatus = "ACTIVE"


class ClientUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    status: ClientStatus | None = None


class ClientOut(BaseModel):
    client_id: str
    name: str
    desk: str
    status: str
    created_at: datetime
    updated_at: datetime


class ClientList(BaseModel):
    items: list[ClientOut]
