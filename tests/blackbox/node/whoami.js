// Logs in with argv username/password and prints the caller's profile as JSON.
"use strict";

const { bearer, client, login, main, unary } = require("./common");

main(async () => {
  const [username, password] = process.argv.slice(2);
  const token = await login(username, password);
  const reply = await unary(client("AuthService"), "GetCurrentUser", {}, bearer(token));
  console.log(JSON.stringify(reply.user));
});
