"""The grammar of namespace and table statements: CREATE/DROP NAMESPACE, CREATE TABLE with its
column definitions and options, ALTER TABLE's forms, DROP TABLE and SHOW. CREATE/DROP/ALTER hand
USER and STORAGE to their own grammars. Execution is engine/ddl.py and engine/alter.py."""

from __future__ import annotations

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.storage_grammar import parse_alter_storage, parse_create_storage, parse_drop_storage
from kalamdb.sql.tokens import Cursor, check_name, qualified
from kalamdb.sql.types import EMBEDDING_MAX_DIM, SERIAL_TYPES, canonical_type
from kalamdb.sql.user_grammar import parse_alter_user, parse_create_user, parse_drop_user

TABLE_TYPES = ("USER", "SHARED", "STREAM")
TABLE_OPTIONS = ("TYPE", "STORAGE_ID", "TTL_SECONDS", "ACCESS_LEVEL", "FLUSH_POLICY")
DEFAULT_FUNCTIONS = ("NOW", "CURRENT_TIMESTAMP", "SNOWFLAKE_ID", "UUID_V7", "ULID", "CURRENT_USER")
_ACCESS_LEVELS = ("PUBLIC", "PRIVATE", "RESTRICTED", "DBA")
_ACCESS_LEVEL_HELP = "ACCESS_LEVEL must be PUBLIC, PRIVATE, RESTRICTED or DBA"
_VECTOR_METRICS = ("COSINE", "L2", "DOT")


def parse_create(c: Cursor) -> st.Statement:
    """CREATE NAMESPACE | [USER|SHARED|STREAM] TABLE | USER | STORAGE."""
    c.expect("CREATE")
    if c.accept("NAMESPACE"):
        ine = c.accept("IF", "NOT", "EXISTS")
        name = check_name(c.name("namespace name").lower(), "namespace")
        c.end()
        return st.CreateNamespace(name, ine)
    prefix = None
    if c.at("USER", "TABLE") or c.at("SHARED", "TABLE") or c.at("STREAM", "TABLE"):
        prefix = c.current().upper
        c.i += 1
    if c.accept("TABLE"):
        return _parse_create_table(c, prefix)
    if c.accept("USER"):
        return parse_create_user(c)
    if c.accept("STORAGE"):
        return parse_create_storage(c)
    raise KalamError("INVALID_SQL", "Expected NAMESPACE, TABLE, USER or STORAGE after CREATE")


def parse_default(c: Cursor) -> dict:
    """A column DEFAULT: {"lit": value} or {"fn": name} for the command-fed functions."""
    t = c.peek()
    if t is None:
        raise KalamError("INVALID_SQL", "Expected a value after DEFAULT")
    if t.kind in ("str", "num"):
        c.i += 1
        return {"lit": t.value}
    nxt = c.peek(1)
    if t.kind == "op" and t.text == "-" and nxt is not None and nxt.kind == "num":
        c.i += 2
        return {"lit": -c.toks[c.i - 1].value}
    word = t.upper
    if word in ("TRUE", "FALSE"):
        c.i += 1
        return {"lit": word == "TRUE"}
    if word == "NULL":
        c.i += 1
        return {"lit": None}
    if word in DEFAULT_FUNCTIONS:
        c.i += 1
        if c.accept_op("("):
            c.expect_op(")")
        return {"fn": "NOW" if word == "CURRENT_TIMESTAMP" else word}
    raise KalamError("INVALID_SQL", f"Unsupported DEFAULT value {t.text!r}: use a literal, NOW(), "
                     "CURRENT_TIMESTAMP, SNOWFLAKE_ID(), UUID_V7(), ULID() or CURRENT_USER()")


def parse_column_def(c: Cursor) -> st.ColumnDef:
    """`name TYPE[(args)] [NOT NULL|NULL|PRIMARY KEY|DEFAULT x|AUTO_INCREMENT|UNIQUE]...`."""
    raw_name = c.name("column name")
    name = check_name(raw_name.lower(), "column")
    if name.startswith("_"):
        raise KalamError("INVALID_SQL", f"Column name '{name}' is reserved: names starting with '_' "
                         "belong to system columns")
    type_tok = c.peek()
    if type_tok is None or type_tok.kind != "word":
        raise KalamError("INVALID_SQL", f"Expected a data type for column '{name}'")
    c.i += 1
    type_word = type_tok.upper
    if type_word == "DOUBLE":
        c.accept("PRECISION")
    data_type = canonical_type(type_word)
    type_args = None
    if c.accept_op("("):
        type_args = []
        while True:
            t = c.peek()
            if t is None or t.kind != "num":
                raise KalamError("INVALID_SQL", f"Expected a number in the type of column '{name}'")
            type_args.append(t.value)
            c.i += 1
            if c.accept_op(")"):
                break
            c.expect_op(",")
    if data_type == "Embedding" and not (type_args and len(type_args) == 1 and isinstance(type_args[0], int)
                                         and 1 <= type_args[0] <= EMBEDDING_MAX_DIM):
        raise KalamError("INVALID_SQL", f"EMBEDDING dimension must be between 1 and {EMBEDDING_MAX_DIM}, "
                             f"got {type_args[0] if type_args else 'none'} (column '{name}')")
    col = st.ColumnDef(name, data_type,
                       type_args=type_args if data_type in ("Decimal", "Embedding") else None)
    if type_word in SERIAL_TYPES:
        col.default = {"fn": "SNOWFLAKE_ID"}
    while not c.done() and not (c.current().kind == "op" and c.current().text in ",)"):
        if c.accept("NOT", "NULL"):
            col.not_null = True
        elif c.accept("NULL"):
            col.not_null = False
        elif c.accept("PRIMARY", "KEY"):
            col.primary_key = True
        elif c.accept("DEFAULT"):
            col.default = parse_default(c)
        elif c.accept("AUTO_INCREMENT") or c.accept("AUTOINCREMENT"):
            col.default = {"fn": "SNOWFLAKE_ID"}
        elif c.accept("UNIQUE"):
            pass  # accepted for compatibility; only the primary key is enforced
        else:
            raise KalamError("INVALID_SQL", f"Unexpected {c.current().text!r} in definition of column '{name}'")
    if col.primary_key:
        col.not_null = True
    return col


def _parse_create_table(c: Cursor, prefix: str | None) -> st.CreateTable:
    ine = c.accept("IF", "NOT", "EXISTS")
    ns, name = qualified(c)
    c.expect_op("(")
    columns: list[st.ColumnDef] = []
    table_pk: list[str] = []
    while True:
        if c.accept("PRIMARY", "KEY"):
            c.expect_op("(")
            while True:
                table_pk.append(c.name("primary key column").lower())
                if c.accept_op(")"):
                    break
                c.expect_op(",")
        else:
            columns.append(parse_column_def(c))
        if c.accept_op(")"):
            break
        c.expect_op(",")
    options: dict = {}
    if c.accept("WITH"):
        c.expect_op("(")
        while True:
            key = c.name("table option").upper()
            if key not in TABLE_OPTIONS:
                raise KalamError("INVALID_SQL", f"Unknown table option '{key}' (known: "
                                 f"{', '.join(TABLE_OPTIONS)})")
            c.expect_op("=")
            t = c.peek()
            if t is None or t.kind not in ("str", "num", "word"):
                raise KalamError("INVALID_SQL", f"Expected a value for table option {key}")
            c.i += 1
            options[key] = t.value
            if c.accept_op(")"):
                break
            c.expect_op(",")
    c.end()
    seen = set()
    for col in columns:
        if col.name in seen:
            raise KalamError("INVALID_SQL", f"Duplicate column '{col.name}'")
        seen.add(col.name)
    pk_cols = [col.name for col in columns if col.primary_key] + table_pk
    if len(pk_cols) > 1:
        raise KalamError("INVALID_SQL", "A table must have a single-column PRIMARY KEY "
                         f"(found {', '.join(pk_cols)})")
    if table_pk:
        match = [col for col in columns if col.name == table_pk[0]]
        if not match:
            raise KalamError("INVALID_SQL", f"PRIMARY KEY column '{table_pk[0]}' is not defined")
        match[0].primary_key = match[0].not_null = True
    type_opt = options.get("TYPE")
    if type_opt is not None:
        type_opt = str(type_opt).upper()
        if type_opt not in TABLE_TYPES:
            raise KalamError("INVALID_SQL", f"Invalid table TYPE '{options['TYPE']}': use USER, SHARED or STREAM")
        if prefix is not None and prefix != type_opt:
            raise KalamError("INVALID_SQL", f"Table type conflict: CREATE {prefix} TABLE with TYPE='{type_opt}'")
        options["TYPE"] = type_opt
    table_type = prefix or type_opt or "SHARED"
    options.pop("TYPE", None)
    if "TTL_SECONDS" in options:
        ttl = options["TTL_SECONDS"]
        if isinstance(ttl, str) and ttl.isdigit():
            ttl = int(ttl)
        if not isinstance(ttl, int) or ttl <= 0:
            raise KalamError("INVALID_SQL", "TTL_SECONDS must be a positive integer")
        options["TTL_SECONDS"] = ttl
    if "ACCESS_LEVEL" in options:
        level = str(options["ACCESS_LEVEL"]).upper()
        if level not in _ACCESS_LEVELS:
            raise KalamError("INVALID_SQL", _ACCESS_LEVEL_HELP)
        options["ACCESS_LEVEL"] = level
        if (prefix or type_opt or "SHARED") != "SHARED":
            raise KalamError("INVALID_SQL", "ACCESS_LEVEL is only supported for SHARED tables")
    if table_type in ("USER", "SHARED") and not pk_cols:
        raise KalamError("INVALID_SQL", f"{table_type.title()} tables require a single-column PRIMARY KEY")
    if table_type == "STREAM" and "TTL_SECONDS" not in options:
        raise KalamError("INVALID_SQL", "Stream tables require TTL_SECONDS")
    if not columns:
        raise KalamError("INVALID_SQL", "A table needs at least one column")
    return st.CreateTable(ns, name, table_type, columns, pk_cols[0] if pk_cols else None, options, ine)


def parse_drop(c: Cursor) -> st.Statement:
    """DROP NAMESPACE | [USER|SHARED|STREAM] TABLE | USER | STORAGE."""
    c.expect("DROP")
    if c.accept("NAMESPACE"):
        ie = c.accept("IF", "EXISTS")
        name = check_name(c.name("namespace name").lower(), "namespace")
        cascade = c.accept("CASCADE")
        c.end()
        return st.DropNamespace(name, ie, cascade)
    prefix = None
    if c.at("USER", "TABLE") or c.at("SHARED", "TABLE") or c.at("STREAM", "TABLE"):
        prefix = c.current().upper
        c.i += 1
    if c.accept("TABLE"):
        ie = c.accept("IF", "EXISTS")
        ns, name = qualified(c)
        c.end()
        return st.DropTable(ns, name, prefix, ie)
    if c.accept("USER"):
        return parse_drop_user(c)
    if c.accept("STORAGE"):
        return parse_drop_storage(c)
    raise KalamError("INVALID_SQL", "Expected NAMESPACE, TABLE, USER or STORAGE after DROP")


def parse_alter(c: Cursor) -> st.Statement:
    """ALTER TABLE | USER | STORAGE."""
    c.expect("ALTER")
    if c.accept("TABLE"):
        ns, name = qualified(c)
        if c.accept("ADD"):
            c.accept("COLUMN")
            col = parse_column_def(c)
            c.end()
            if col.primary_key:
                raise KalamError("INVALID_SQL", "ALTER TABLE cannot add a PRIMARY KEY column")
            return st.AlterTableAddColumn(ns, name, col)
        if c.at("DROP", "INDEX") or c.at("DROP", "VECTOR", "INDEX"):
            c.i += 2 if c.at("DROP", "INDEX") else 3
            col_name = check_name(c.name("column name").lower(), "column")
            c.end()
            return st.AlterTable(ns, name, "drop_index", col_name)
        if c.accept("DROP"):
            c.accept("COLUMN")
            col_name = check_name(c.name("column name").lower(), "column")
            c.end()
            return st.AlterTableDropColumn(ns, name, col_name)
        return _parse_alter_table_op(c, ns, name)
    if c.accept("USER"):
        return parse_alter_user(c)
    if c.accept("STORAGE"):
        return parse_alter_storage(c)
    raise KalamError("INVALID_SQL", "Expected TABLE, USER or STORAGE after ALTER")


def parse_show(c: Cursor) -> st.Statement:
    """SHOW NAMESPACES | STORAGES | TABLES [IN ns]."""
    c.expect("SHOW")
    if c.accept("NAMESPACES"):
        c.end()
        return st.ShowNamespaces()
    if c.accept("STORAGES"):
        c.end()
        return st.ShowStorages()
    if c.accept("TABLES"):
        ns = None
        if c.accept("IN") or c.accept("FROM"):
            ns = check_name(c.name("namespace name").lower(), "namespace")
        c.end()
        return st.ShowTables(ns)
    raise KalamError("INVALID_SQL", "SHOW supports NAMESPACES and TABLES [IN ns]")


def _parse_alter_table_op(c: Cursor, ns: str | None, name: str) -> st.AlterTable:
    """MODIFY COLUMN, ALTER COLUMN SET/DROP NOT NULL|DEFAULT, RENAME COLUMN, SET ACCESS LEVEL,
    SET TBLPROPERTIES (ACCESS_LEVEL = ...), CREATE [VECTOR] INDEX."""
    if c.accept("MODIFY"):
        c.accept("COLUMN")
        start = c.i
        new_def = parse_column_def(c)
        c.end()
        if new_def.default is not None or new_def.primary_key:
            raise KalamError("INVALID_SQL", "MODIFY COLUMN takes a type and NULL / NOT NULL only")
        words = [t.upper for t in c.toks[start:]]
        nullable = False if new_def.not_null else (True if "NULL" in words else None)
        return st.AlterTable(ns, name, "modify", new_def.name, new_def.data_type, new_def.type_args, nullable)
    if c.accept("ALTER"):
        c.accept("COLUMN")
        col = check_name(c.name("column name").lower(), "column")
        if c.accept("SET", "NOT", "NULL"):
            op, default = "set_not_null", None
        elif c.accept("DROP", "NOT", "NULL"):
            op, default = "drop_not_null", None
        elif c.accept("SET", "DEFAULT"):
            op, default = "set_default", parse_default(c)
        elif c.accept("DROP", "DEFAULT"):
            op, default = "drop_default", None
        else:
            raise KalamError("INVALID_SQL", "ALTER COLUMN supports SET NOT NULL, DROP NOT NULL, SET DEFAULT x "
                             "and DROP DEFAULT")
        c.end()
        return st.AlterTable(ns, name, op, col, default=default)
    if c.accept("RENAME"):
        c.accept("COLUMN")
        old = check_name(c.name("column name").lower(), "column")
        c.expect("TO")
        new = check_name(c.name("new column name").lower(), "column")
        c.end()
        return st.AlterTable(ns, name, "rename", old, new_name=new)
    if c.accept("SET", "ACCESS", "LEVEL"):
        level = c.name("access level").upper()
        c.end()
        if level not in _ACCESS_LEVELS:
            raise KalamError("INVALID_SQL", _ACCESS_LEVEL_HELP)
        return st.AlterTable(ns, name, "access_level", level=level)
    if c.accept("SET", "TBLPROPERTIES"):
        c.expect_op("(")
        props = {}
        while True:
            key = c.name("property").upper()
            c.expect_op("=")
            props[key] = str(c.name("property value"))
            if c.accept_op(")"):
                break
            c.expect_op(",")
        c.end()
        if set(props) != {"ACCESS_LEVEL"}:
            raise KalamError("INVALID_SQL", "ACCESS_LEVEL property is required for SET ACCESS LEVEL "
                             "(SET TBLPROPERTIES supports ACCESS_LEVEL only)")
        level = props["ACCESS_LEVEL"].upper()
        if level not in _ACCESS_LEVELS:
            raise KalamError("INVALID_SQL", _ACCESS_LEVEL_HELP)
        return st.AlterTable(ns, name, "access_level", level=level)
    if c.at("CREATE", "INDEX") or c.at("CREATE", "VECTOR", "INDEX"):
        c.i += 2 if c.at("CREATE", "INDEX") else 3
        col = check_name(c.name("column name").lower(), "column")
        metric = "COSINE"
        if c.accept("USING"):
            metric = c.name("metric").upper()
            if metric not in _VECTOR_METRICS:
                raise KalamError("INVALID_SQL", f"Unsupported vector index metric '{metric}'")
        c.end()
        return st.AlterTable(ns, name, "create_index", col, metric=metric)
    raise KalamError("INVALID_SQL", "Unsupported ALTER TABLE operation: use ADD COLUMN, DROP COLUMN, MODIFY COLUMN, "
                     "ALTER COLUMN, RENAME COLUMN, SET ACCESS LEVEL, SET TBLPROPERTIES or CREATE/DROP INDEX")
