// A Socket.IO 4 broadcast server: a client emits `join` with a room name
// (acked once joined), then `m` with a message; the server broadcasts each
// message to everyone in the sender's room, the sender included, and acks
// the emit. WebSocket transport only (no long-polling), no compression,
// as a load test of the fan-out would configure it.
"use strict";

const { Server } = require("socket.io");

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 7102);

const io = new Server({
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    if (typeof room !== "string") return;
    socket.join(room);
    socket.data.room = room;
    if (typeof ack === "function") ack();
  });
  socket.on("m", (body, ack) => {
    const room = socket.data.room;
    if (room !== undefined) io.to(room).emit("m", body);
    if (typeof ack === "function") ack();
  });
});

io.listen(port, { host });
console.error(`socket.io ${require("socket.io/package.json").version} on ${host}:${port}`);
