// matrix-js-sdk with its Rust crypto (Element's own) against a running server:
// two users, an encrypted room, a message each way, each decrypted by the other.
//   node e2ee_chat.mjs BASE_URL ALICE BOB PASSWORD
// Prints "OK" and exits 0 on success; exits 1 with the reason otherwise.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("warn");
const [base, aliceName, bobName, password] = process.argv.slice(2);

// Where the server has no push rules yet (404), answer the SDK's start-up GET /pushrules/ (which it
// retries forever) with an empty rule set; everything else is the server's answer.
async function fetchFn(url, init) {
  const resp = await fetch(url, init);
  if (resp.status === 404 && String(url).includes("/pushrules/")) {
    return new Response(JSON.stringify({ global: {} }), { status: 200, headers: { "Content-Type": "application/json" } });
  }
  return resp;
}

async function start(user) {
  const anon = sdk.createClient({ baseUrl: base, fetchFn });
  const r = await anon.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user }, password });
  const client = sdk.createClient({ baseUrl: base, accessToken: r.access_token, userId: r.user_id,
                                    deviceId: r.device_id, fetchFn });
  await client.initRustCrypto({ useIndexedDB: false });
  const synced = new Promise((resolve) => client.on(sdk.ClientEvent.Sync, (state) => state === "PREPARED" && resolve()));
  await client.startClient({ initialSyncLimit: 20 });
  await synced;
  return client;
}

function waitFor(what, check, timeoutMs = 60000) {
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error(`timed out: ${what}`)), timeoutMs);
    const tick = async () => {
      try {
        if (await check()) { clearTimeout(deadline); resolve(); return; }
      } catch (e) { /* not yet */ }
      setTimeout(tick, 200);
    };
    tick();
  });
}

function plaintexts(client, roomId) {
  const room = client.getRoom(roomId);
  if (!room) return [];
  return room.getLiveTimeline().getEvents()
    .filter((e) => e.getType() === "m.room.message" && e.isEncrypted() && !e.isDecryptionFailure())
    .map((e) => e.getContent().body);
}

async function main() {
  const alice = await start(aliceName);
  const bob = await start(bobName);
  try {
    const { room_id: roomId } = await alice.createRoom({
      invite: [bob.getUserId()], is_direct: true,
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await waitFor("bob invited", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
    await bob.joinRoom(roomId);
    await waitFor("alice sees bob joined", () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join");
    await waitFor("encryption on for bob", () => bob.getCrypto().isEncryptionEnabledInRoom(roomId));
    await alice.sendTextMessage(roomId, "hello from alice");
    await waitFor("bob decrypts", () => plaintexts(bob, roomId).includes("hello from alice"));
    await bob.sendTextMessage(roomId, "hello from bob");
    await waitFor("alice decrypts", () => plaintexts(alice, roomId).includes("hello from bob"));
    console.log("OK");
  } finally {
    alice.stopClient();
    bob.stopClient();
  }
}

main().then(() => process.exit(0), (e) => { console.error(e?.stack || String(e)); process.exit(1); });
