"""The baseline for the upload path: FastAPI reading the same multipart body and discarding it."""

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/images", status_code=202)
async def discard(request: Request) -> dict[str, str]:
    form = await request.form()
    await form.close()
    return {"status": "discarded"}
