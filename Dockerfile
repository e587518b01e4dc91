# One fal-flux-mcp replica of a team's server: Streamable HTTP on port 8000, configured by the
# environment (compose.yaml gives it; README "Run it for a team" lists what it needs).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fal_flux_mcp ./fal_flux_mcp
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home flux \
    && mkdir -p /data/output /data/state \
    && chown -R flux /data

USER flux
# Saved images go to the volume every replica mounts here; previews stay in the replica's own state.
ENV FLUX_MCP_OUTPUT_DIR=/data/output \
    FLUX_MCP_STATE_DIR=/data/state
EXPOSE 8000
ENTRYPOINT ["fal-flux-mcp", "serve", "--transport", "streamable-http", "--host", "0.0.0.0", "--port", "8000"]
