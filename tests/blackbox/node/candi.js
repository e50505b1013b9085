// CANDI's side of a decision, end to end: sign in as the SERVICE account (argv username,
// password), submit an analysis (argv analysis id), then wait on WatchDecision for the verdict.
// Prints "watching <id> <status>" once the stream is open and "verdict <status> <actions>" at
// the end; exits 0 only if the server ended the stream with OK after a terminal verdict.
"use strict";

const { bearer, client, grpc, login, main, unary } = require("./common");

const TERMINAL = new Set([
  "DECISION_STATUS_APPROVED",
  "DECISION_STATUS_REJECTED",
  "DECISION_STATUS_EXPIRED",
]);

function analysis(analysisId) {
  const detected = Math.floor(Date.now() / 1000) - 300;
  return {
    analysis_id: analysisId,
    incident_id: "inc-node-1",
    threat_level: "critical",
    source_ip: "198.51.100.23",
    attributed_actor: "APT-Ünïcode 熊",
    confidence: 91.5,
    iocs: ["evil.example", "198.51.100.23"],
    ttps: ["T1059.001", "T1021"],
    recommended_actions: [
      { type: "ACTION_TYPE_BLOCK_IP", target: "198.51.100.23", description: "block at edge" },
      { type: "ACTION_TYPE_QUARANTINE_SYSTEM", target: "host-42", description: "" },
    ],
    forensic_summary: "beaconing to a known C2 from host-42",
    priority: "PRIORITY_CRITICAL",
    detected_at: { seconds: String(detected), nanos: 0 },
  };
}

function watchVerdict(stub, analysisId, metadata) {
  return new Promise((resolve, reject) => {
    const call = stub.WatchDecision({ analysis_id: analysisId }, metadata, {
      deadline: Date.now() + 60000,
    });
    let verdict = null;
    call.on("data", (reply) => {
      const { status } = reply.decision;
      if (verdict === null && !TERMINAL.has(status)) {
        console.log(`watching ${analysisId} ${status}`);
      }
      if (TERMINAL.has(status)) {
        verdict = reply.decision;
      }
    });
    call.on("error", reject);
    call.on("status", (status) => {
      if (status.code !== grpc.status.OK) {
        return; // "error" carries it
      }
      if (verdict === null) {
        reject(new Error("stream ended without a verdict"));
      } else {
        resolve(verdict);
      }
    });
  });
}

main(async () => {
  const [username, password, analysisId] = process.argv.slice(2);
  const metadata = bearer(await login(username, password));
  const decisions = client("DecisionService");
  const submitted = await unary(decisions, "SubmitDecision", analysis(analysisId), metadata);
  if (!submitted.created) {
    throw new Error("the submission was not new");
  }
  const verdict = await watchVerdict(decisions, analysisId, metadata);
  const actions = verdict.resolution.approved_actions.map((a) => a.type).join(",");
  console.log(`verdict ${verdict.status} ${actions}`);
});
