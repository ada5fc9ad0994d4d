"""Open the Iceberg catalog the settings ask for.

Three catalogs, one call:

- ``sqlite`` (default): pyiceberg's SQL catalog in ``data_dir/lake/catalog.db``; nothing
  to run. Several processes may commit at once (SQLite serialises the pointer swap).
- ``postgresql``: the same SQL catalog on a PostgreSQL server
  (``uri = postgresql+psycopg2://user:password@host:5432/database``).
- ``rest``: an Iceberg REST catalog (Polaris, Nessie, Lakekeeper, Tabular ...) at
  ``uri``; ``warehouse`` is passed as the REST ``warehouse`` property. Configuration
  only: K2's tests do not run a REST server.

Data files go to ``warehouse``: a local directory (default ``data_dir/lake/warehouse``)
or ``s3://bucket/prefix`` with the ``s3_*`` settings (endpoint, keys, region, path
style for MinIO/moto). pyiceberg's drivers are imported only here, lazily, so a
missing extra is reported by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2.config import LakeSettings, Settings
from k2.errors import ConfigError

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

#: The catalog name K2 registers its tables under (SQL catalogs key rows by it).
CATALOG_NAME = "k2"


def open_catalog(settings: Settings) -> Catalog:
    """The catalog of ``settings.lake`` (relative defaults resolve under ``data_dir``).

    Raises :class:`~k2.errors.ConfigError` for an incomplete configuration (e.g. a
    PostgreSQL or REST catalog without ``uri``) or a missing optional driver.
    """
    return catalog_from(settings.lake, settings.data_dir)


def catalog_properties(lake: LakeSettings, data_dir: Path) -> dict[str, str]:
    """The pyiceberg properties for ``lake`` (no connection is made).

    Exposed so the query layer can hand the same warehouse and S3 settings to DuckDB
    or another engine.
    """
    warehouse = lake.warehouse or (Path(data_dir) / "lake" / "warehouse").resolve().as_uri()
    if "://" not in warehouse:
        warehouse = Path(warehouse).resolve().as_uri()
    props: dict[str, str] = {"warehouse": warehouse}
    if lake.catalog == "sqlite":
        if lake.uri:
            props["uri"] = lake.uri
        else:
            db = (Path(data_dir) / "lake" / "catalog.db").resolve()
            props["uri"] = f"sqlite:///{db}"
    elif lake.uri:
        props["uri"] = lake.uri
    else:
        raise ConfigError(f"K2_LAKE__URI is required for the {lake.catalog} catalog")
    if lake.catalog == "rest":
        props["type"] = "rest"
    else:
        props["type"] = "sql"
        # Creates pyiceberg's catalog tables on first use (idempotent).
        props["init_catalog_tables"] = "true"
    if warehouse.startswith(("s3://", "s3a://")) or lake.s3_endpoint:
        props.update(_s3_properties(lake))
    return props


def _s3_properties(lake: LakeSettings) -> dict[str, str]:
    props = {"s3.region": lake.s3_region}
    if lake.s3_endpoint:
        props["s3.endpoint"] = lake.s3_endpoint
    if lake.s3_access_key_id:
        props["s3.access-key-id"] = lake.s3_access_key_id
    if lake.s3_secret_access_key:
        props["s3.secret-access-key"] = lake.s3_secret_access_key
    if lake.s3_path_style:
        props["s3.force-virtual-addressing"] = "false"
    return props


def catalog_from(lake: LakeSettings, data_dir: Path) -> Catalog:
    """The catalog for ``lake``; local directories it needs are created."""
    props = catalog_properties(lake, data_dir)
    if lake.catalog == "sqlite" and not lake.uri:
        (Path(data_dir) / "lake").mkdir(parents=True, exist_ok=True)
    if props["warehouse"].startswith("file://"):
        Path(props["warehouse"].removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    try:
        if props["type"] == "rest":
            from pyiceberg.catalog.rest import RestCatalog

            rest_props = {k: v for k, v in props.items() if k != "type"}
            return RestCatalog(CATALOG_NAME, **rest_props)
        from pyiceberg.catalog.sql import SqlCatalog
        from sqlalchemy.exc import DBAPIError

        sql_props = {k: v for k, v in props.items() if k != "type"}
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                return SqlCatalog(CATALOG_NAME, **sql_props)
            except DBAPIError as exc:
                # Stages starting together on a new catalog each see its tables
                # missing and create them; the losers fail with "already exists".
                # Opening again finds the winner's tables.
                if attempt + 1 == _CREATE_ATTEMPTS or not _lost_create_race(exc):
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises
    except ModuleNotFoundError as exc:
        extra = {"sqlite": "sql-sqlite", "postgresql": "sql-postgres", "rest": "s3fs"}
        raise ConfigError(
            f"the {lake.catalog} catalog needs {exc.name!r}: "
            f"pip install 'pyiceberg[{extra[lake.catalog]}]'"
        ) from exc


#: Opening a SQL catalog is tried this often when another process creates its tables.
_CREATE_ATTEMPTS = 3


def _lost_create_race(exc: Exception) -> bool:
    """Whether ``exc`` is what creating a SQL catalog's tables raises when another
    process created them first (SQLite: "already exists"; PostgreSQL: that, or a
    duplicate key in its type catalog)."""
    text = str(exc).lower()
    return "already exists" in text or "duplicate key value" in text


def metadata_locations(
    catalog: Catalog, identifiers: Sequence[str]
) -> dict[str, str | None] | None:
    """Each table's current metadata file, by ``namespace.table`` identifier, read with
    one catalog query where the catalog allows it; None where it does not (REST: the
    caller loads the tables instead). A table the catalog lacks is absent.

    Every Iceberg commit writes a new metadata file, so a location equal to a loaded
    table's ``metadata_location`` proves nothing was committed since. This is how the
    query engine and the live tail look for new snapshots several times a second:
    ``load_table`` reads and parses the whole metadata file each time (1–4 ms a table
    for K2's, on a thread holding the GIL while queries wait), this query ~0.06 ms on
    SQLite.
    Errors are the catalog driver's own, as ``load_table`` raises them.
    """
    from pyiceberg.catalog.sql import SqlCatalog

    if not isinstance(catalog, SqlCatalog):
        return None
    wanted: dict[tuple[str, str], str] = {}
    for identifier in identifiers:
        namespace, _, name = identifier.rpartition(".")
        wanted[namespace, name] = identifier
    query = _locations_query(catalog.name, tuple(sorted({ns for ns, _ in wanted})))
    with catalog.engine.connect() as conn:
        rows = conn.execute(query).all()
    return {
        wanted[namespace, name]: location
        for namespace, name, location in rows
        if (namespace, name) in wanted
    }


@lru_cache(maxsize=64)
def _locations_query(catalog_name: str, namespaces: tuple[str, ...]) -> Any:
    """The SQL catalog's query for the tables of ``namespaces``: built once (building
    it costs about as much as running it)."""
    from pyiceberg.catalog.sql import IcebergTables
    from sqlalchemy import select

    return select(
        IcebergTables.table_namespace, IcebergTables.table_name, IcebergTables.metadata_location
    ).where(
        IcebergTables.catalog_name == catalog_name,
        IcebergTables.table_namespace.in_(namespaces),
    )


def refresh_if_changed(table: Table) -> bool:
    """Refresh ``table`` in place when its catalog holds a newer metadata file than
    the loaded one (always, where the catalog cannot say cheaply); whether it did.
    Errors are the catalog driver's own."""
    identifier = ".".join(table.name())
    current = metadata_locations(table.catalog, [identifier])
    if current is not None and current.get(identifier) == table.metadata_location:
        return False
    table.refresh()
    return True
