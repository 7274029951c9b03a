"""The baseline for bench/api.py: a bare FastAPI app answering the same paths with bodies of
the same size, with one database insert per submit and nothing else.

GET task is answered twice: ``/v1/tasks/{id}`` from a sync ``def`` route (a hop to the
thread pool and back), and ``/async/v1/tasks/{id}`` from an ``async def`` route, which
does nothing but return the body: what FastAPI and uvicorn themselves cost a request.

Run as ``python bench/bare_app.py PORT DATABASE_URL TASK_BODY_BYTES LIST_BODY_BYTES``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, Request


def build(database_url: str, task_bytes: int, list_bytes: int) -> FastAPI:
    if database_url.startswith("sqlite"):
        engine = sa.create_engine(database_url, connect_args={"check_same_thread": False})
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    else:
        engine = sa.create_engine(database_url, pool_size=16, max_overflow=0)
    meta = sa.MetaData()
    rows = sa.Table(
        "bare_tasks",
        meta,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    meta.create_all(engine)
    task_body = {"code": 200, "data": {"id": "task_x", "pad": "x" * max(0, task_bytes - 40)}}
    list_body = {"code": 200, "data": [], "pad": "x" * max(0, list_bytes - 40)}
    app = FastAPI()

    @app.get("/v1/tasks/{task_id}")
    def get_task(task_id: str) -> dict[str, Any]:
        return task_body

    @app.get("/async/v1/tasks/{task_id}")
    async def get_task_async(task_id: str) -> dict[str, Any]:
        return task_body

    @app.get("/v1/tasks")
    def list_tasks() -> dict[str, Any]:
        return list_body

    @app.post("/v1/videos/generations")
    async def submit(request: Request) -> dict[str, Any]:
        body = await request.body()
        return await _insert(body)

    from starlette.concurrency import run_in_threadpool

    async def _insert(body: bytes) -> dict[str, Any]:
        def insert() -> str:
            task_id = "task_" + uuid.uuid4().hex[:26]
            with engine.begin() as conn:
                conn.execute(
                    rows.insert().values(
                        id=task_id, body=json.dumps(json.loads(body)), created_at=time.time()
                    )
                )
            return task_id

        task_id = await run_in_threadpool(insert)
        return {"code": 200, "data": [{"status": "submitted", "task_id": task_id}]}

    return app


if __name__ == "__main__":
    port, url, task_bytes, list_bytes = sys.argv[1:5]
    uvicorn.run(
        build(url, int(task_bytes), int(list_bytes)),
        host="127.0.0.1",
        port=int(port),
        log_level="warning",
    )
