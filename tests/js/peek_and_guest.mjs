// Element's SDK against Whispr: a guest registers, peeks into a world_readable room
// (GET /rooms/{roomId}/initialSync, then GET /events as new messages arrive), joins it and
// talks, and is refused what guests may not do. Prints one JSON line of what it saw.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.disableAll();
const [baseUrl, roomId, senderToken, senderId] = process.argv.slice(2);
const withTimeout = (promise, what) => Promise.race([promise, new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`timed out: ${what}`)), 15000))]);

const anonymous = sdk.createClient({ baseUrl });
const reg = await anonymous.registerGuest({ body: { initial_device_display_name: "js guest" } });
const guest = sdk.createClient({ baseUrl, accessToken: reg.access_token, userId: reg.user_id,
                                 deviceId: reg.device_id });
guest.setGuest(true);
const sender = sdk.createClient({ baseUrl, accessToken: senderToken, userId: senderId });

const room = await guest.peekInRoom(roomId);
const bodies = () => room.getLiveTimeline().getEvents()
    .filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body);
const peeked = bodies();
const live = new Promise((resolve) => room.on(sdk.RoomEvent.Timeline, (ev) => {
    if (ev.getContent().body === "live") resolve();
}));
await sender.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: "live" }, "js-live");
await withTimeout(live, "the live message through /events");
const followed = bodies();
guest.stopPeeking();

await guest.joinRoom(roomId);
const sent = await guest.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: "guest via js" }, "js-1");
let refused = null;
try {
    await guest.createRoom({});
} catch (e) {
    refused = e.errcode;
}
console.log(JSON.stringify({ user_id: reg.user_id, room_name: room.name, peeked, live: followed,
                             sent: sent.event_id, refused }));
process.exit(0);
