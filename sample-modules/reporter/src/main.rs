//! Reads the TMP102 at 0x48 on the `sensors` bus (like `thermometer`) and
//! publishes each reading, in °C, to an MQTT broker over a plain
//! `std::net::TcpStream`, with the packets encoded by `mqttbytes`.
//!
//! `BROKER` is the broker's `host:port` (default `broker.local:1883`),
//! `TOPIC` where readings go (default `kelp/temperature`), `READINGS` how
//! many to publish before stopping (default: for ever), `INTERVAL_MS` the
//! time between them (default 1000). Each is published at least once
//! (QoS 1): the broker has it when `published` is logged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use kelp_sdk::I2c;
use mqttbytes::QoS;
use mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Disconnect, Packet, Publish};
use tmp1x2::{SlaveAddr, Tmp1x2};

/// Largest packet accepted from the broker; it only ever sends acks.
const MAX_PACKET: usize = 4096;

fn main() -> ExitCode {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let broker = setting("BROKER", "broker.local:1883");
    let topic = setting("TOPIC", "kelp/temperature");
    let interval = Duration::from_millis(number("INTERVAL_MS").unwrap_or(1000));
    let readings = number("READINGS");

    let bus = match I2c::open("sensors") {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("reporter: bus `sensors`: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sensor = Tmp1x2::new(bus, SlaveAddr::default());
    let mut mqtt = match Mqtt::connect(&broker) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("reporter: broker {broker}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("connected to {broker}");
    let mut taken = 0u64;
    loop {
        let celsius = match sensor.read_temperature() {
            Ok(c) => c,
            Err(tmp1x2::Error::I2C(e)) => {
                eprintln!("reporter: sensor: {e}");
                return ExitCode::FAILURE;
            }
        };
        let reading = format!("{celsius:.1}");
        if let Err(e) = mqtt.publish(&topic, reading.as_bytes()) {
            eprintln!("reporter: publishing to {broker}: {e}");
            return ExitCode::FAILURE;
        }
        println!("published {reading} to {topic}");
        taken += 1;
        if readings == Some(taken) {
            mqtt.disconnect();
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(interval);
    }
}

/// One MQTT 3.1.1 session over TCP.
struct Mqtt {
    stream: TcpStream,
    incoming: BytesMut,
    next_id: u16,
}

impl Mqtt {
    fn connect(broker: &str) -> Result<Mqtt, String> {
        let stream = TcpStream::connect(broker).map_err(|e| e.to_string())?;
        let mut mqtt = Mqtt {
            stream,
            incoming: BytesMut::new(),
            next_id: 1,
        };
        let mut connect = Connect::new("kelp-reporter");
        connect.keep_alive = 60;
        mqtt.send(|buf| connect.write(buf))?;
        match mqtt.receive()? {
            Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }) => Ok(mqtt),
            Packet::ConnAck(ack) => Err(format!("refused: {:?}", ack.code)),
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.pkid = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.send(|buf| publish.write(buf))?;
        loop {
            match self.receive()? {
                Packet::PubAck(ack) if ack.pkid == publish.pkid => return Ok(()),
                Packet::PubAck(_) | Packet::PingResp => {}
                other => return Err(format!("expected PUBACK, got {other:?}")),
            }
        }
    }

    fn disconnect(mut self) {
        let _ = self.send(|buf| Disconnect.write(buf));
    }

    fn send(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
    ) -> Result<(), String> {
        let mut buf = BytesMut::new();
        encode(&mut buf).map_err(|e| format!("encoding: {e:?}"))?;
        self.stream.write_all(&buf).map_err(|e| e.to_string())
    }

    fn receive(&mut self) -> Result<Packet, String> {
        loop {
            match mqttbytes::v4::read(&mut self.incoming, MAX_PACKET) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(format!("from the broker: {e:?}")),
            }
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the broker closed the connection".into());
            }
            self.incoming.extend_from_slice(&chunk[..n]);
        }
    }
}
