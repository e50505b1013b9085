// Shared by the Node.js black-box clients: load the repo's protos, make typed-less clients,
// and turn callbacks into promises. HITL_ADDRESS and HITL_PROTOS come from the test harness.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = process.env.HITL_PROTOS;
const ADDRESS = process.env.HITL_ADDRESS;
const CALL_MS = 20000;

function loadHitl() {
  const files = ["access.proto", "auth.proto", "decision.proto", "audit.proto"].map((f) =>
    path.join(PROTOS, "hitl", "v1", f),
  );
  const definition = protoLoader.loadSync(files, {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).hitl.v1;
}

const hitl = loadHitl();

function client(service) {
  return new hitl[service](ADDRESS, grpc.credentials.createInsecure());
}

function bearer(token) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

function unary(stub, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    stub[method](request, metadata, { deadline: Date.now() + CALL_MS }, (err, reply) =>
      err ? reject(err) : resolve(reply),
    );
  });
}

async function login(username, password) {
  const reply = await unary(client("AuthService"), "Login", { username, password });
  return reply.tokens.access_token;
}

// Any failure prints the gRPC status and exits non-zero, so the Python side sees why.
function main(run) {
  run().then(
    () => process.exit(0),
    (err) => {
      console.error(`FAILED ${err.code !== undefined ? grpc.status[err.code] : ""} ${err.message}`);
      process.exit(1);
    },
  );
}

module.exports = { grpc, hitl, client, bearer, unary, login, main };
