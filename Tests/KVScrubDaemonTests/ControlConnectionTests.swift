import Foundation
import NIOCore
import NIOEmbedded
import Testing
@_spi(Fuzzing) @testable import KVScrubDaemon
import KVScrubControl

/// `ControlConnection` in process, on NIO's `EmbeddedChannel`: the framing,
/// the order of replies, and the flow control (when it reads, when it stops
/// answering, when a stalled client is cut off), step by step with the
/// embedded loop's own clock. The end-to-end tests (`ControlSocketAttackTests`)
/// run the same code against a real socket and a real daemon; here the
/// handler answers each request with its `name`, so every reply says which
/// request it answers.
@Suite struct ControlConnectionTests {
    /// Counts the reads the connection asks for (it reads only when it asks: `autoRead` is off on the real socket).
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    struct Client {
        let channel: EmbeddedChannel
        let loop: EmbeddedEventLoop
        let reads: ReadCounter

        /// A connected channel with the connection's own pipeline behind a read counter.
        init(limits: ConnectionLimits = ConnectionLimits()) throws {
            loop = EmbeddedEventLoop()
            channel = EmbeddedChannel(loop: loop)
            reads = ReadCounter()
            try channel.pipeline.syncOperations.addHandler(reads)
            try ControlConnection.install(on: channel, handler: Self.echoName, limits: limits, privileged: { _ in false })
            try channel.connect(to: SocketAddress(unixDomainSocketPath: "/control")).wait()
        }

        /// Answers every request with its `name` as the message; `explain` with an empty name blocks
        /// nothing and fails, as the real one does.
        static let echoName: ControlServer.Handler = { request, _ in
            .now(ControlResponse(ok: true, message: request.name ?? request.cmd))
        }

        func send(_ text: String) throws {
            var buffer = channel.allocator.buffer(capacity: text.utf8.count)
            buffer.writeString(text)
            try channel.writeInbound(buffer)
        }

        /// Every reply line written so far.
        func replies() throws -> [String] {
            var lines: [String] = []
            while let out = try channel.readOutbound(as: ByteBuffer.self) {
                lines += String(buffer: out).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            }
            return lines
        }

        func messages() throws -> [String] {
            try replies().map { line in
                (try? JSONDecoder().decode(ControlResponse.self, from: Data(line.utf8))).flatMap { $0.message ?? $0.error } ?? "unparsable: \(line)"
            }
        }
    }

    static func request(_ name: String) -> String { "{\"cmd\":\"explain\",\"name\":\"\(name)\"}\n" }

    @Test func linesInOneRead_areAnsweredInOrder_andTheNextReadIsAskedOnlyOnceAllAre() throws {
        let c = try Client()
        #expect(c.reads.reads == 1, "admitted: one read asked for")
        try c.send((1...50).map { Self.request("\($0)") }.joined())
        #expect(try c.messages() == (1...50).map { "\($0)" })
        #expect(c.reads.reads == 2, "one more read, after the last waiting line: \(c.reads.reads)")
        // A line split across two reads is one request.
        try c.send("{\"cmd\":\"explain\",")
        #expect(try c.replies().isEmpty)
        try c.send("\"name\":\"split\"}\n")
        #expect(try c.messages() == ["split"])
    }

    @Test func anUnwritableChannel_stopsAnsweringAndReading_untilTheClientCatchesUp() throws {
        let c = try Client()
        let readsBefore = c.reads.reads
        c.channel.isWritable = false  // the reply that goes out now is the one the client does not take
        try c.send(Self.request("a") + Self.request("b") + Self.request("c"))
        #expect(try c.messages() == ["a"], "only the first line is answered while the channel is unwritable")
        #expect(c.reads.reads == readsBefore, "nothing is read while replies wait")
        // More requests arrive (already in NIO's buffer): they wait too.
        try c.send(Self.request("d"))
        #expect(try c.replies().isEmpty)
        c.channel.isWritable = true
        c.channel.pipeline.fireChannelWritabilityChanged()
        #expect(try c.messages() == ["b", "c", "d"])
        #expect(c.reads.reads == readsBefore + 1, "reading resumes once every waiting line is answered")
    }

    @Test func aClientThatStaysUnwritable_isClosedAfterTheStallLimit_andOneThatCatchesUpIsNot() throws {
        let slow = try Client()
        slow.channel.isWritable = false
        try slow.send(Self.request("1"))
        _ = try slow.replies()
        slow.loop.advanceTime(by: ControlConnection.writeStall - .seconds(1))
        #expect(slow.channel.isActive, "within the stall limit the client may still catch up")
        slow.channel.isWritable = true
        slow.channel.pipeline.fireChannelWritabilityChanged()
        slow.loop.advanceTime(by: .seconds(2))
        #expect(slow.channel.isActive, "caught up in time: the stall timer is cancelled")

        let stalled = try Client()
        stalled.channel.isWritable = false
        try stalled.send(Self.request("1"))
        stalled.loop.advanceTime(by: ControlConnection.writeStall)
        #expect(!stalled.channel.isActive, "unwritable for the whole stall limit: closed")
    }

    @Test func theIdleEvent_closesAQuietClient_butNotOneWhoseReplyWaits() throws {
        // NIO's IdleStateHandler measures idleness on the real clock, not the embedded loop's, so its
        // event is raised here by hand; what is under test is what the connection does with it.
        let quiet = try Client()
        try quiet.send(Self.request("1"))
        _ = try quiet.replies()
        quiet.channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
        #expect(!quiet.channel.isActive, "nothing asked, nothing owed: closed")

        // Idle on the read side because its reply has not gone out yet: that is the stall limit's business.
        let waiting = try Client()
        waiting.channel.isWritable = false
        try waiting.send(Self.request("1") + Self.request("2"))
        waiting.channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
        #expect(waiting.channel.isActive)
        waiting.channel.isWritable = true
        waiting.channel.pipeline.fireChannelWritabilityChanged()
        #expect(try waiting.messages() == ["1", "2"])
    }

    @Test func aMalformedLine_getsAnError_andTheConnectionGoesOn_blankLinesAreSkipped() throws {
        let c = try Client()
        try c.send("not json\n  \r\n\n" + Self.request("after"))
        let m = try c.messages()
        #expect(m.count == 2, "\(m)")
        #expect(m.first?.hasPrefix("malformed request") == true)
        #expect(m.last == "after")
        #expect(c.channel.isActive)
    }

    @Test func aLineOverTheLimit_isAnsweredAfterTheLinesBeforeIt_thenTheConnectionCloses() throws {
        let c = try Client()
        try c.send(Self.request("first") + String(repeating: "x", count: ControlServer.maxRequestBytes + 1))
        let m = try c.messages()
        #expect(m.count == 2, "\(m)")
        #expect(m.first == "first")
        #expect(m.last?.contains("longer than") == true)
        #expect(!c.channel.isActive)
    }

    @Test func theSameLineAgain_isAnsweredAgain_notFromAStaleDecode() throws {
        // The connection remembers the last line's decoding; a different line must be decoded afresh.
        let c = try Client()
        try c.send(Self.request("x") + Self.request("x") + Self.request("y") + Self.request("x"))
        #expect(try c.messages() == ["x", "x", "y", "x"])
    }

    @Test func aRefusedPeer_getsTheReasonAndIsClosed_withoutBeingRead() throws {
        // No credentials on an embedded channel: the peer counts as one unknown user, here over its share.
        let limits = ConnectionLimits(total: 4, reserved: 1, perUID: 1)
        let first = try Client(limits: limits)
        #expect(first.channel.isActive)
        let second = try Client(limits: limits)
        let m = try second.messages()
        #expect(m.count == 1 && m[0].contains("too many connections"), "\(m)")
        #expect(second.reads.reads == 0)
        #expect(!second.channel.isActive)
        // Once the first leaves, its slot is free again.
        try first.channel.close().wait()
        let third = try Client(limits: limits)
        #expect(third.channel.isActive && third.reads.reads == 1)
    }
}
