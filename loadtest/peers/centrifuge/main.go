// Command node is a Centrifuge node (the library Centrifugo is built on)
// serving its JSON protocol over WebSocket at /connection/websocket:
// anonymous connections, subscribe to any channel, client-side publish
// allowed; a publication goes to every subscriber of the channel, the
// publisher included, and the publish command gets a reply once it went
// through the (in-memory) broker.
//
// Built by start.sh in GOPATH mode from Debian's packages.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"

	"github.com/centrifugal/centrifuge"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7104", "listen address")
	flag.Parse()

	node, err := centrifuge.New(centrifuge.DefaultConfig)
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		// Anonymous: no token needed.
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{UserID: ""}}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		c.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
		c.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			cb(centrifuge.PublishReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	http.Handle("/connection/websocket", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		ReadBufferSize:     1024,
		UseWriteBufferPool: true,
	}))
	log.Printf("centrifuge node listening on %s (/connection/websocket)", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}
