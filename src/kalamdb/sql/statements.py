"""Statement objects: what a request asks for, after parsing and before execution. Each one can be
written to (and read from) the replicated command as plain msgpack-able data, so followers never
need the request's text for statements that carry secrets (passwords travel only as hashes)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class Statement:
    tag: ClassVar[str] = ""
    #: True when applying the statement changes replicated state
    writes: ClassVar[bool] = False
    #: True when a read of it must see every acknowledged write (ReadIndex in a cluster); SELECTs
    #: decide this from the tables they name
    reads_data: ClassVar[bool] = False

    @property
    def is_write(self) -> bool:
        return self.writes

    def to_wire(self) -> dict:
        out: dict[str, Any] = {"k": self.tag}
        for name in _wire_fields(type(self)):
            out[name] = _to_wire_value(getattr(self, name))
        return out


_WIRE_FIELDS: dict[type, tuple[str, ...]] = {}


def _wire_fields(cls: type) -> tuple[str, ...]:
    """The names of the fields a statement class writes to the wire, worked out once per class:
    `dataclasses.fields` on every write was ~1 % of a leader's time (docs/PERFORMANCE.md)."""
    names = _WIRE_FIELDS.get(cls)
    if names is None:
        names = _WIRE_FIELDS[cls] = tuple(f.name for f in fields(cls) if f.metadata.get("wire", True))
    return names


def _to_wire_value(v):
    if isinstance(v, Statement):
        return v.to_wire()
    if isinstance(v, ColumnDef):
        return v.__dict__.copy()
    if isinstance(v, list):
        return [_to_wire_value(x) for x in v]
    return v


@dataclass
class ColumnDef:
    name: str
    data_type: str  # canonical (BigInt, Text, ...)
    not_null: bool = False
    default: dict | None = None  # {"lit": value} or {"fn": "NOW"|"SNOWFLAKE_ID"|...}
    primary_key: bool = False
    type_args: list | None = None  # e.g. DECIMAL(p, s), EMBEDDING(n)

    @property
    def sql_type(self) -> str:
        """The type as SQL spells it (upstream's sql_name): TEXT, DECIMAL(10, 2), EMBEDDING(384)."""
        from kalamdb.sql.types import sql_name

        return sql_name(self.data_type, self.type_args)


@dataclass
class Query(Statement):
    """SELECT/INSERT/UPDATE/DELETE (and WITH ...): parsed by sqlglot, re-parsed from text on apply
    through the same parse cache."""

    tag: ClassVar[str] = "q"
    sql: str
    kind: str  # select | insert | update | delete
    ast: Any = field(default=None, repr=False, compare=False, metadata={"wire": False})
    #: values lifted out of the text by the parser (INSERT literals); None: the request's params
    params: list | None = None
    #: (cache key, compiled plan) of the engine's last compile of this statement: one write asks
    #: for its plan up to three times (admission, the savepoint check, the run)
    compiled_memo: Any = field(default=None, repr=False, compare=False, metadata={"wire": False})

    @property
    def is_write(self) -> bool:
        return self.kind != "select"


@dataclass
class CreateNamespace(Statement):
    tag: ClassVar[str] = "create_ns"
    writes: ClassVar[bool] = True
    name: str
    if_not_exists: bool = False


@dataclass
class DropNamespace(Statement):
    tag: ClassVar[str] = "drop_ns"
    writes: ClassVar[bool] = True
    name: str
    if_exists: bool = False
    cascade: bool = False


@dataclass
class ShowNamespaces(Statement):
    tag: ClassVar[str] = "show_ns"


@dataclass
class UseNamespace(Statement):
    tag: ClassVar[str] = "use"
    name: str


@dataclass
class CreateTable(Statement):
    tag: ClassVar[str] = "create_table"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str
    table_type: str  # USER | SHARED | STREAM
    columns: list[ColumnDef]
    primary_key: str | None
    options: dict
    if_not_exists: bool = False


@dataclass
class DropTable(Statement):
    tag: ClassVar[str] = "drop_table"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str
    table_type: str | None = None
    if_exists: bool = False


@dataclass
class AlterTableAddColumn(Statement):
    tag: ClassVar[str] = "alter_add"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str
    column: ColumnDef


@dataclass
class AlterTableDropColumn(Statement):
    tag: ClassVar[str] = "alter_drop"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str
    column: str


@dataclass
class ShowTables(Statement):
    tag: ClassVar[str] = "show_tables"
    namespace: str | None = None


@dataclass
class DescribeTable(Statement):
    tag: ClassVar[str] = "describe"
    namespace: str | None
    name: str


@dataclass
class CreateUser(Statement):
    tag: ClassVar[str] = "create_user"
    writes: ClassVar[bool] = True
    username: str
    role: str
    email: str | None = None
    password: str | None = field(default=None, repr=False, metadata={"wire": False})
    password_hash: str | None = field(default=None, repr=False)
    auth_type: str = "password"  # password | oauth | internal
    auth_data: str | None = None  # oauth: {"provider_type", "issuer", "subject"} as JSON


@dataclass
class AlterUser(Statement):
    tag: ClassVar[str] = "alter_user"
    writes: ClassVar[bool] = True
    username: str
    role: str | None = None
    password: str | None = field(default=None, repr=False, metadata={"wire": False})
    password_hash: str | None = field(default=None, repr=False)
    email: str | None = None


@dataclass
class DropUser(Statement):
    tag: ClassVar[str] = "drop_user"
    writes: ClassVar[bool] = True
    username: str
    if_exists: bool = False


@dataclass
class ExecuteAs(Statement):
    tag: ClassVar[str] = "exec_as"
    username: str
    inner: Statement

    @property
    def is_write(self) -> bool:
        return self.inner.is_write


@dataclass
class Begin(Statement):
    tag: ClassVar[str] = "begin"


@dataclass
class Commit(Statement):
    tag: ClassVar[str] = "commit"


@dataclass
class Rollback(Statement):
    tag: ClassVar[str] = "rollback"


@dataclass(frozen=True)
class ClusterOp:
    """A CLUSTER statement for the node layer to execute (the engine only parses it)."""

    #: snapshot | purge | trigger_election | transfer_leader | stepdown | join | leave | rebalance | clear
    #: | list | status
    op: str
    node_id: int | None = None
    upto: int | None = None
    rpc_addr: str | None = None
    api_addr: str | None = None


@dataclass
class ClusterStatement(Statement):
    tag: ClassVar[str] = "cluster"
    op: ClusterOp


@dataclass
class KillLiveQuery(Statement):
    """KILL LIVE QUERY <live_id>: ends one live subscription on the node that receives it (the node
    layer executes it; it changes no replicated state)."""

    tag: ClassVar[str] = "kill_live"
    live_id: str


@dataclass
class AlterTable(Statement):
    """ALTER TABLE forms other than ADD/DROP COLUMN (one operation per statement, as upstream):
    modify (column, data_type, type_args, nullable), set_not_null / drop_not_null, set_default
    (default) / drop_default, rename (column -> new_name), access_level (level), create_index
    (column, metric) / drop_index (column)."""

    tag: ClassVar[str] = "alter_table"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str
    op: str
    column: str | None = None
    data_type: str | None = None
    type_args: list | None = None
    nullable: bool | None = None
    default: dict | None = None
    new_name: str | None = None
    level: str | None = None
    metric: str | None = None


@dataclass
class CreateStorage(Statement):
    tag: ClassVar[str] = "create_storage"
    writes: ClassVar[bool] = True
    storage_id: str
    storage_type: str
    base_directory: str
    storage_name: str | None = None
    description: str | None = None
    shared_tables_template: str | None = None
    user_tables_template: str | None = None
    credentials: str | None = None
    config_json: str | None = None


@dataclass
class AlterStorage(Statement):
    tag: ClassVar[str] = "alter_storage"
    writes: ClassVar[bool] = True
    storage_id: str
    storage_name: str | None = None
    description: str | None = None
    shared_tables_template: str | None = None
    user_tables_template: str | None = None
    config_json: str | None = None


@dataclass
class DropStorage(Statement):
    tag: ClassVar[str] = "drop_storage"
    writes: ClassVar[bool] = True
    storage_id: str
    if_exists: bool = False


@dataclass
class ShowStorages(Statement):
    tag: ClassVar[str] = "show_storages"


@dataclass
class StorageFlush(Statement):
    """STORAGE FLUSH TABLE [ns.]t | STORAGE FLUSH ALL [IN ns] (engine/storage.py)."""

    tag: ClassVar[str] = "storage_flush"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str | None
    all: bool = False


@dataclass
class StorageCompact(Statement):
    tag: ClassVar[str] = "storage_compact"
    writes: ClassVar[bool] = True
    namespace: str | None
    name: str | None
    all: bool = False


@dataclass
class KillJob(Statement):
    tag: ClassVar[str] = "kill_job"
    writes: ClassVar[bool] = True
    job_id: str


STATEMENT_TYPES: dict[str, type[Statement]] = {
    cls.tag: cls
    for cls in (Query, CreateNamespace, DropNamespace, ShowNamespaces, UseNamespace, CreateTable, DropTable,
                AlterTableAddColumn, AlterTableDropColumn, ShowTables, DescribeTable, CreateUser, AlterUser,
                DropUser, ExecuteAs, Begin, Commit, Rollback, AlterTable, CreateStorage, AlterStorage, DropStorage,
                ShowStorages, StorageFlush, StorageCompact, KillJob)
}


def register(*classes: type[Statement]) -> None:
    """Add statement kinds defined in other modules (sql/topics.py) to the wire format."""
    for cls in classes:
        if cls.tag in STATEMENT_TYPES and STATEMENT_TYPES[cls.tag] is not cls:
            raise ValueError(f"statement tag {cls.tag!r} is taken")
        STATEMENT_TYPES[cls.tag] = cls


def statement_from_wire(data: dict) -> Statement:
    """Rebuild a statement from its wire form (Query's AST is filled in by the caller)."""
    data = dict(data)
    cls = STATEMENT_TYPES.get(data.pop("k", None))
    if cls is None:
        raise ValueError("unknown statement kind in command")
    if cls is ExecuteAs:
        data["inner"] = statement_from_wire(data["inner"])
    elif cls is CreateTable:
        data["columns"] = [ColumnDef(**c) for c in data["columns"]]
    elif cls is AlterTableAddColumn:
        data["column"] = ColumnDef(**data["column"])
    return cls(**data)
